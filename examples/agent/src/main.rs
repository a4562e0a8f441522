//! `calinet-agent`: the calinet reference node agent.

fn main() {
    std::process::exit(calinet_agent::cli::main());
}
