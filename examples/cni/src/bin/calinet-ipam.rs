//! `calinet-ipam`: the IPAM-only CNI plugin, for use under other plugins.

fn main() {
    calinet_cni::run::main_for(calinet_cni::run::Mode::IpamOnly)
}
