//! The calinet CNI plugin (under construction).

fn main() {
    eprintln!("calinet CNI plugin: not built yet");
    std::process::exit(2);
}
