//! Parity of `ClipTextEncoder` with transformers' `CLIPTextModel` on the tiny fixtures.

mod common;

use burn::module::Param;
use burn::tensor::{DType, Tensor};
use layret_core::Error;
use layret_core::clip::ClipTextEncoder;

fn golden_ids(name: &str) -> Vec<Vec<u32>> {
    let common::Golden { values: ids, shape } =
        common::golden(&format!("clip_{name}.safetensors"), "input_ids");
    ids.chunks(shape[1])
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect()
}

fn load(name: &str) -> ClipTextEncoder {
    let dir = common::fixtures().join(name).join("text_encoder");
    ClipTextEncoder::from_dir(&dir, &common::device(), DType::F32, None)
        .unwrap()
        .0
}

fn check(name: &str) {
    let model = load(name);
    let ids = golden_ids(name);
    let file = format!("clip_{name}.safetensors");
    let last = model.encode(&ids, 0).unwrap();
    let err = common::max_abs_diff(last, &common::golden(&file, "last_hidden_state"));
    layret_test_support::assert_within(err, 1e-4, format_args!("{name} last_hidden_state"));
    let skip = model.encode(&ids, 1).unwrap();
    let err = common::max_abs_diff(skip, &common::golden(&file, "clip_skip_1"));
    layret_test_support::assert_within(err, 1e-4, format_args!("{name} clip_skip=1"));
}

#[test]
fn sd1_text_encoder_matches_transformers() {
    // quick_gelu, `text_model.` key prefix and a position_ids buffer in the file.
    check("sd1-tiny");
}

#[test]
fn sd2_text_encoder_matches_transformers() {
    // gelu, transformers-5 key layout, pad token "!".
    check("sd2-tiny");
}

#[test]
fn a_perturbed_weight_breaks_parity() {
    // The parity check above can fail: nudge one bias by 1e-3 and the error exceeds 1e-4.
    let mut model = load("sd1-tiny");
    let bias = model.final_layer_norm.bias.val();
    let nudged = bias.clone() + Tensor::<1>::ones(bias.dims(), &bias.device()) * 1e-3;
    model.final_layer_norm.bias = Param::from_tensor(nudged);
    let ids = golden_ids("sd1-tiny");
    let out = model.encode(&ids, 0).unwrap();
    let err = common::max_abs_diff(
        out,
        &common::golden("clip_sd1-tiny.safetensors", "last_hidden_state"),
    );
    assert!(err > 1e-4, "perturbation not detected: {err}");
}

#[test]
fn bad_ids_are_errors_not_panics() {
    let model = load("sd2-tiny");
    assert!(matches!(
        model.encode(&[vec![49408; 77]], 0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        model.encode(&[vec![1; 78]], 0),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        model.encode(&[vec![1; 77], vec![1; 76]], 0),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(model.encode(&[], 0), Err(Error::Shape { .. })));
    assert!(matches!(
        model.encode(&[vec![1; 77]], 3),
        Err(Error::InvalidArgument { .. })
    ));
}

/// Write a copy of the sd2-tiny text encoder with `edit` applied to its tensors.
fn edited_copy(
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) -> common::TestDir {
    let src = common::fixtures().join("sd2-tiny/text_encoder");
    let tmp = common::tempdir();
    let dst = tmp.path();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut items: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut items);
    let views: Vec<(String, safetensors::tensor::TensorView)> = items
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
    tmp
}

#[test]
fn weight_file_problems_name_file_and_key() {
    let dev = common::device();
    // Missing tensor.
    let dir = edited_copy(|t| t.retain(|(k, ..)| k != "final_layer_norm.bias"));
    match ClipTextEncoder::from_dir(dir.path(), &dev, DType::F32, None) {
        Err(Error::MissingTensor { key, file }) => {
            assert_eq!(key, "final_layer_norm.bias");
            assert!(file.ends_with("model.safetensors"));
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    // Wrong shape.
    let dir = edited_copy(|t| {
        let e = t
            .iter_mut()
            .find(|(k, ..)| k == "final_layer_norm.bias")
            .unwrap();
        e.2 = vec![8];
        e.3.truncate(16);
    });
    match ClipTextEncoder::from_dir(dir.path(), &dev, DType::F32, None) {
        Err(Error::TensorShape {
            key, expected, got, ..
        }) => {
            assert_eq!(
                (key.as_str(), expected, got),
                ("final_layer_norm.bias", vec![16], vec![8])
            );
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
    // Unexpected extra tensor.
    let dir = edited_copy(|t| {
        t.push((
            "encoder.layers.9.mlp.fc1.weight".into(),
            safetensors::Dtype::F16,
            vec![2],
            vec![0; 4],
        ))
    });
    match ClipTextEncoder::from_dir(dir.path(), &dev, DType::F32, None) {
        Err(Error::UnexpectedTensors { keys, count, .. }) => {
            assert_eq!(count, 1);
            assert_eq!(keys, vec!["encoder.layers.9.mlp.fc1.weight".to_string()]);
        }
        other => panic!("expected UnexpectedTensors, got {other:?}"),
    }
    // NaN in a tensor.
    let dir = edited_copy(|t| {
        let e = t
            .iter_mut()
            .find(|(k, ..)| k == "final_layer_norm.bias")
            .unwrap();
        e.3[0..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    });
    match ClipTextEncoder::from_dir(dir.path(), &dev, DType::F32, None) {
        Err(Error::NonFiniteTensor { key, count, .. }) => {
            assert_eq!((key.as_str(), count), ("final_layer_norm.bias", 1));
        }
        other => panic!("expected NonFiniteTensor, got {other:?}"),
    }
    // Truncated file.
    let dir = edited_copy(|_| {});
    let f = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..(len as usize) / 2]).unwrap();
    assert!(matches!(
        ClipTextEncoder::from_dir(dir.path(), &dev, DType::F32, None),
        Err(Error::Safetensors { .. })
    ));
    // Missing file, and a config naming an unsupported activation.
    std::fs::remove_file(&f).unwrap();
    assert!(matches!(
        ClipTextEncoder::from_dir(dir.path(), &dev, DType::F32, None),
        Err(Error::MissingFile { .. })
    ));
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"gelu\"", "\"relu\""),
    )
    .unwrap();
    match ClipTextEncoder::from_dir(dir.path(), &dev, DType::F32, None) {
        Err(Error::UnsupportedConfig { key, .. }) => assert_eq!(key, "hidden_act"),
        other => panic!("expected UnsupportedConfig, got {other:?}"),
    }
}
