//! Host data as [`ndarray`] arrays at the API boundary: tensors, decoded images and masks
//! come out as arrays, and images can go in as them.
//!
//! ```
//! use layret_core::array::{images_to_array, array_to_images};
//! let img = image::RgbImage::from_pixel(4, 2, image::Rgb([10, 20, 30]));
//! let a = images_to_array(&[img.clone()]);          // [1, 2, 4, 3]
//! assert_eq!(a.shape(), &[1, 2, 4, 3]);
//! assert_eq!(array_to_images(a.view()).unwrap()[0], img);
//! ```

pub use ndarray;
use ndarray::{Array, Array2, Array4, ArrayView4, Dimension, IxDyn};

use burn::tensor::{Device, Tensor, TensorData};
use image::{GrayImage, RgbImage};

use crate::error::{Error, Result};

/// A tensor's values on the host as an f32 array of the same shape.
pub fn tensor_to_array<const D: usize>(t: Tensor<D>, what: &str) -> Result<Array<f32, IxDyn>> {
    let shape = t.dims().to_vec();
    let v = crate::host::to_f32_vec(t, what)?;
    Array::from_shape_vec(IxDyn(&shape), v).map_err(|e| Error::invalid(what, e.to_string()))
}

/// [`tensor_to_array`] with the rank in the type.
pub fn tensor_to_array4(t: Tensor<4>, what: &str) -> Result<Array4<f32>> {
    tensor_to_array(t, what)?
        .into_dimensionality()
        .map_err(|e| Error::invalid(what, e.to_string()))
}

/// [`tensor_to_array`] with the rank in the type.
pub fn tensor_to_array2(t: Tensor<2>, what: &str) -> Result<Array2<f32>> {
    tensor_to_array(t, what)?
        .into_dimensionality()
        .map_err(|e| Error::invalid(what, e.to_string()))
}

/// An f32 array as a tensor of the same shape on `device`.
pub fn array_to_tensor<const D: usize, S>(
    a: &ndarray::ArrayBase<S, ndarray::Dim<[usize; D]>>,
    device: &Device,
) -> Tensor<D>
where
    S: ndarray::Data<Elem = f32>,
    ndarray::Dim<[usize; D]>: Dimension,
{
    let shape: [usize; D] = a
        .shape()
        .try_into()
        .unwrap_or_else(|_| unreachable!("the array has rank D"));
    let v: Vec<f32> = a.iter().copied().collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// 8-bit RGB images of one size as `[N, H, W, 3]`.
pub fn images_to_array(images: &[RgbImage]) -> Array4<u8> {
    let (w, h) = images.first().map_or((0, 0), |i| i.dimensions());
    let mut v = Vec::with_capacity(images.len() * (w * h * 3) as usize);
    for img in images {
        v.extend_from_slice(img.as_raw());
    }
    Array4::from_shape_vec((images.len(), h as usize, w as usize, 3), v)
        .unwrap_or_else(|_| Array4::zeros((0, 0, 0, 3)))
}

/// `[N, H, W, 3]` 8-bit values as images (an error for any other channel count).
pub fn array_to_images(a: ArrayView4<u8>) -> Result<Vec<RgbImage>> {
    let [n, h, w, c] = [a.shape()[0], a.shape()[1], a.shape()[2], a.shape()[3]];
    if c != 3 || h == 0 || w == 0 {
        return Err(Error::Shape {
            what: "image array".into(),
            expected: "[N, H ≥ 1, W ≥ 1, 3] (height, width, RGB)".into(),
            got: a.shape().to_vec(),
        });
    }
    (0..n)
        .map(|i| {
            let v: Vec<u8> = a.index_axis(ndarray::Axis(0), i).iter().copied().collect();
            RgbImage::from_raw(w as u32, h as u32, v).ok_or_else(|| {
                Error::invalid("image array", format!("image {i} has the wrong length"))
            })
        })
        .collect()
}

/// A grayscale image (a mask) as `[H, W]`.
pub fn gray_to_array(image: &GrayImage) -> Array2<u8> {
    let (w, h) = image.dimensions();
    Array2::from_shape_vec((h as usize, w as usize), image.as_raw().clone())
        .unwrap_or_else(|_| Array2::zeros((0, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let dev = Device::flex();
        let t = Tensor::<4>::from_data(
            TensorData::new((0..24).map(|i| i as f32).collect::<Vec<_>>(), [1, 2, 3, 4]),
            &dev,
        );
        let a = tensor_to_array4(t.clone(), "t").unwrap();
        assert_eq!(a[[0, 1, 2, 3]], 23.0);
        let back = array_to_tensor(&a, &dev);
        assert_eq!(
            back.into_data().try_into_vec::<f32>().unwrap(),
            t.into_data().try_into_vec::<f32>().unwrap()
        );
        let bad = Array4::<u8>::zeros((1, 2, 2, 4));
        assert!(matches!(
            array_to_images(bad.view()),
            Err(Error::Shape { .. })
        ));
        let g = GrayImage::from_fn(3, 2, |x, y| image::Luma([(x + 3 * y) as u8]));
        assert_eq!(gray_to_array(&g)[[1, 2]], 5);
    }
}
