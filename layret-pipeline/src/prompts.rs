//! docs/method.md's prompt rules: `y_p`, `y_c`, `y_r` and the subject tokens.

use layret_core::tokenizer::ClipTokenizer;
use layret_core::{Error, Result};

/// The prompts of one request for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPrompts {
    /// The personal phrase `P` ("sks dog").
    pub phrase: String,
    /// The class phrase `C` ("dog").
    pub class_phrase: String,
    /// The user prompt `y_p` (contains `P`).
    pub personal: String,
    /// `y_c`: `y_p` with the first occurrence of `P` replaced by `C`.
    pub class: String,
    /// `y_r` = prefix + `P`.
    pub reference: String,
}

impl SubjectPrompts {
    /// Build and check the prompts: `P` must occur in `prompt`, `C` must not be empty.
    pub fn new(
        prompt: &str,
        phrase: &str,
        class_phrase: &str,
        reference_prefix: &str,
    ) -> Result<Self> {
        if phrase.trim().is_empty() {
            return Err(Error::invalid("phrase", "the personal phrase is empty"));
        }
        if class_phrase.trim().is_empty() {
            return Err(Error::invalid("class", "the class phrase is empty"));
        }
        if !prompt.contains(phrase) {
            return Err(Error::PhraseNotInPrompt {
                phrase: phrase.into(),
                prompt: prompt.into(),
            });
        }
        Ok(Self {
            phrase: phrase.into(),
            class_phrase: class_phrase.into(),
            personal: prompt.into(),
            class: prompt.replacen(phrase, class_phrase, 1),
            reference: format!("{reference_prefix}{phrase}"),
        })
    }
}

/// Positions (BOS = 0) of the first occurrence of `phrase`'s tokens in `prompt`'s encoding;
/// an error if absent or cut off by the 77-token limit.
pub fn subject_tokens(tokenizer: &ClipTokenizer, prompt: &str, phrase: &str) -> Result<Vec<usize>> {
    let ids = tokenizer.encode(prompt)?;
    let p = tokenizer.encode_phrase(phrase)?;
    let body = tokenizer.encode_phrase(prompt)?;
    let not_found = || Error::PhraseNotInPrompt {
        phrase: phrase.into(),
        prompt: prompt.into(),
    };
    if p.is_empty() || p.len() > body.len() {
        return Err(not_found());
    }
    let start = (0..=body.len() - p.len())
        .find(|&i| body[i..i + p.len()] == p[..])
        .ok_or_else(not_found)?;
    let positions: Vec<usize> = (start + 1..start + 1 + p.len()).collect();
    // Inside the encoded prompt (before EOS).
    if positions.iter().any(|&i| i + 1 >= ids.len()) {
        return Err(not_found());
    }
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_substitution_and_reference() {
        let p = SubjectPrompts::new(
            "a sks dog next to a sks dog",
            "sks dog",
            "dog",
            "a photo of ",
        )
        .unwrap();
        assert_eq!(p.class, "a dog next to a sks dog");
        assert_eq!(p.reference, "a photo of sks dog");
        assert!(matches!(
            SubjectPrompts::new("a cat", "sks dog", "dog", ""),
            Err(Error::PhraseNotInPrompt { .. })
        ));
        assert!(matches!(
            SubjectPrompts::new("a sks dog", "sks dog", " ", ""),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
