//! `calinet-agent`: the calinet reference node agent and its lab.

fn main() {
    std::process::exit(calinet_agent::cli::main());
}
