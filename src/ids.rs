//! Public ids: a prefix and a ULID, e.g. `task_01JD3Z7YB4W4D0Q8WQK9N4V2XH`. They sort by creation time
//! and carry 80 random bits, so they cannot be guessed.

/// `{prefix}_` + a ULID, monotonic within the process, so ids minted in the same millisecond still
/// sort in the order they were made.
pub fn new_id(prefix: &str) -> String {
    static GENERATOR: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());
    let mut generator = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // `generate` fails only when the random part overflows within one millisecond.
    let id = generator.generate().unwrap_or_else(|_| ulid::Ulid::new());
    format!("{prefix}_{id}")
}

/// `chars` random letters and digits (about 5.95 bits each): tokens that must not be guessed.
pub fn new_secret(chars: usize) -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng().sample_iter(&Alphanumeric).take(chars).map(char::from).collect()
}
