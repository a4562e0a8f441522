//! `calinet-lab`: the seed article's cluster in network namespaces, one
//! `calinet-agent` process per node.

fn main() {
    std::process::exit(calinet_lab::cli::main());
}
