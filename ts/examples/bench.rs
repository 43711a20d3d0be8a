//! Prints the CISSA throughput figures: `cargo run --release -p iodoform-ts --example bench [quick]`.
fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    println!("{}", ts::bench::descramble_rate(quick));
    println!("{}", ts::bench::scramble_rate(quick));
}
