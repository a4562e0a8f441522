//! `calinet`: the CNI plugin (IPAM plus workload plumbing). See the README.

fn main() {
    calinet_cni::run::main_for(calinet_cni::run::Mode::Plugin)
}
