//! The calinet reference node agent (under construction).

fn main() {
    eprintln!("calinet-agent: not built yet");
    std::process::exit(2);
}
