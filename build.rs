// The migrations are embedded by `sqlx::migrate!`: a changed or new migration file rebuilds the binary.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
