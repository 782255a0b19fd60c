//! The id of one run of a job (`--job-id`), which names its S3 prefixes and, on Kubernetes, its objects.

/// Checks a `--job-id`: 1 to 63 lowercase letters, digits and '-', starting with a letter or digit (it names
/// S3 prefixes and, on Kubernetes, objects).
///
/// # Errors
/// What is wrong with it.
pub fn check_job_id(id: &str) -> Result<(), String> {
    let ok_chars = id
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if id.is_empty() || id.len() > 63 || !ok_chars || id.starts_with('-') {
        return Err(format!(
            "job id {id:?}: expected 1 to 63 lowercase letters, digits and '-', not starting with '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_dns_labels_of_at_most_63_characters() {
        for good in ["a", "run-1", "0abc", &"x".repeat(63)] {
            assert_eq!(check_job_id(good), Ok(()), "{good}");
        }
        for bad in ["", "-a", "Run", "a_b", "a.b", &"x".repeat(64)] {
            assert_eq!(
                check_job_id(bad),
                Err(format!(
                    "job id {bad:?}: expected 1 to 63 lowercase letters, digits and '-', not starting with '-'"
                )),
                "{bad}"
            );
        }
    }
}
