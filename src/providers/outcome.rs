//! How the end of an upstream job reads for clients: its images, or a failure in the gateway's own
//! client-safe words, told apart as `content_policy` when the provider's filter blocked the request.

use super::JobState;
use crate::tasks::{OutputImage, TaskError, TaskErrorCode};

/// Who finished the job, for [`finished`]: a provider, or a backend node (SPEC §2.2).
pub const PROVIDER: &str = "The provider";
pub const BACKEND_NODE: &str = "The backend node";

/// A finished job: its images, or an `upstream_failed` failure when `who` gave none.
pub fn finished(who: &str, images: Vec<OutputImage>) -> JobState {
    match require_images(who, images) {
        Ok(images) => JobState::Succeeded { images },
        Err(error) => JobState::Failed(error),
    }
}

/// [`finished`], unless the provider's safety checker flagged any of the images (fal's
/// `has_nsfw_concepts`, WaveSpeed's `has_nsfw_contents`, one flag per image): then none is delivered
/// and the task fails as `content_policy`.
pub fn finished_unless_flagged(who: &str, images: Vec<OutputImage>, flags: &[bool]) -> JobState {
    if flags.iter().any(|flagged| *flagged) {
        return JobState::Failed(TaskError {
            code: TaskErrorCode::ContentPolicy,
            message: "The provider's safety checker flagged the generated image; it is not delivered.".into(),
        });
    }
    finished(who, images)
}

/// [`finished`] for a job that ends within its submit.
pub fn require_images(who: &str, images: Vec<OutputImage>) -> Result<Vec<OutputImage>, TaskError> {
    if images.is_empty() {
        return Err(TaskError {
            code: TaskErrorCode::UpstreamFailed,
            message: format!("{who} finished without an image."),
        });
    }
    Ok(images)
}

/// A job the provider failed, for its `reason`: `content_policy` when its filter blocked the request,
/// else `upstream_failed`; the message names the reason.
pub fn failed(reason: &str) -> TaskError {
    let code = if is_content_policy(reason) { TaskErrorCode::ContentPolicy } else { TaskErrorCode::UpstreamFailed };
    TaskError { code, message: generation_failed(Some(reason)) }
}

/// A failure message naming the provider's reason, or a general one when it gave none.
pub fn generation_failed(reason: Option<&str>) -> String {
    match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(reason) => format!("The provider could not generate the image: {}", short(reason)),
        None => "The provider could not generate the image.".to_owned(),
    }
}

/// Whether a provider's failure reason says its content filter blocked the request.
pub fn is_content_policy(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    ["nsfw", "content policy", "sensitive", "safety", "moderation"].iter().any(|word| reason.contains(word))
}

/// At most 300 characters of a provider's text, for messages and logs.
pub fn short(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_filter_reasons_are_content_policy() {
        for reason in ["NSFW content detected", "Blocked by our content policy", "flagged as sensitive", "Safety check"]
        {
            let error = failed(reason);
            assert_eq!(error.code, TaskErrorCode::ContentPolicy, "{reason}");
            assert_eq!(error.message, format!("The provider could not generate the image: {reason}"));
        }
        let error = failed("  GPU out of memory ");
        assert_eq!(error.code, TaskErrorCode::UpstreamFailed);
        assert_eq!(error.message, "The provider could not generate the image: GPU out of memory");
        assert_eq!(failed("").message, "The provider could not generate the image.");
        assert_eq!(failed(" ").code, TaskErrorCode::UpstreamFailed);
    }

    #[test]
    fn a_job_without_images_failed() {
        let image = || OutputImage { url: "https://u.example/1.png".into() };
        assert!(matches!(finished(PROVIDER, vec![image()]), JobState::Succeeded { images } if images.len() == 1));
        let JobState::Failed(error) = finished(PROVIDER, vec![]) else { panic!("failed") };
        assert_eq!(
            (error.code, error.message.as_str()),
            (TaskErrorCode::UpstreamFailed, "The provider finished without an image.")
        );
        let error = require_images(BACKEND_NODE, vec![]).expect_err("no image");
        assert_eq!(error.message, "The backend node finished without an image.");
    }

    #[test]
    fn a_flagged_image_is_not_delivered() {
        let image = || OutputImage { url: "https://u.example/1.png".into() };
        let JobState::Failed(error) = finished_unless_flagged(PROVIDER, vec![image(), image()], &[false, true]) else {
            panic!("failed")
        };
        assert_eq!(error.code, TaskErrorCode::ContentPolicy);
        let clean = finished_unless_flagged(PROVIDER, vec![image()], &[false]);
        assert!(matches!(clean, JobState::Succeeded { images } if images.len() == 1));
        assert!(matches!(finished_unless_flagged(PROVIDER, vec![image()], &[]), JobState::Succeeded { .. }));
    }

    #[test]
    fn long_reasons_are_cut_at_300_characters() {
        let reason = "é".repeat(400);
        assert_eq!(short(&reason), format!("{}…", "é".repeat(300)));
        assert_eq!(short(" ok "), "ok");
    }
}
