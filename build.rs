// A new migration file in sql/ must rebuild the binary that embeds them.
fn main() {
    println!("cargo:rerun-if-changed=sql");
}
