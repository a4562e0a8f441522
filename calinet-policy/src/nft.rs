//! The nft script backend: renders a [`Ruleset`] (or a [`Diff`]) as `nft -f` input,
//! for inspection, `nft -c` validation, and as the baseline the netlink backend is
//! measured against. One script is one transaction.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use crate::Error;
use crate::ir::{
    Chain, Diff, Family, Hook, IfDir, Match, Rule, Ruleset, SetElems, Side, Stmt, ct, port_ranges,
    v4_ranges, v6_ranges,
};

fn set_type(e: &SetElems) -> &'static str {
    match e {
        SetElems::Addr4(_) => "type ipv4_addr;",
        SetElems::Addr6(_) => "type ipv6_addr;",
        SetElems::Net4(_) => "type ipv4_addr; flags interval;",
        SetElems::Net6(_) => "type ipv6_addr; flags interval;",
        SetElems::Ports(_) => "type inet_service; flags interval;",
        SetElems::AddrProtoPort4(_) => "type ipv4_addr . inet_proto . inet_service;",
        SetElems::AddrProtoPort6(_) => "type ipv6_addr . inet_proto . inet_service;",
        SetElems::IfGoto(_) => "type ifname : verdict;",
    }
}

/// Element list without braces (`a, b, c`); empty when the set is empty.
fn elements(e: &SetElems) -> String {
    let items: Vec<String> = match e {
        SetElems::Addr4(s) => s.iter().map(ToString::to_string).collect(),
        SetElems::Addr6(s) => s.iter().map(ToString::to_string).collect(),
        SetElems::Net4(s) => v4_ranges(s)
            .into_iter()
            .map(|(a, b)| range(Ipv4Addr::from(a), Ipv4Addr::from(b), a == b))
            .collect(),
        SetElems::Net6(s) => v6_ranges(s)
            .into_iter()
            .map(|(a, b)| range(Ipv6Addr::from(a), Ipv6Addr::from(b), a == b))
            .collect(),
        SetElems::Ports(s) => port_ranges(s)
            .into_iter()
            .map(|(a, b)| range(a, b, a == b))
            .collect(),
        SetElems::AddrProtoPort4(s) => s
            .iter()
            .map(|(a, p, n)| format!("{a} . {p} . {n}"))
            .collect(),
        SetElems::AddrProtoPort6(s) => s
            .iter()
            .map(|(a, p, n)| format!("{a} . {p} . {n}"))
            .collect(),
        SetElems::IfGoto(m) => m
            .iter()
            .map(|(k, v)| format!("\"{k}\" : goto {v}"))
            .collect(),
    };
    items.join(", ")
}

fn range<T: std::fmt::Display>(a: T, b: T, single: bool) -> String {
    if single {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

fn side_addr(side: Side) -> &'static str {
    match side {
        Side::Src => "saddr",
        Side::Dst => "daddr",
    }
}

fn side_port(side: Side) -> &'static str {
    match side {
        Side::Src => "sport",
        Side::Dst => "dport",
    }
}

fn ip_kw(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn neg(n: bool) -> &'static str {
    if n { "!= " } else { "" }
}

fn ct_names(bits: u32) -> String {
    let mut v = Vec::new();
    for (b, n) in [
        (ct::INVALID, "invalid"),
        (ct::ESTABLISHED, "established"),
        (ct::RELATED, "related"),
        (ct::NEW, "new"),
    ] {
        if bits & b != 0 {
            v.push(n);
        }
    }
    v.join(",")
}

/// One rule as nft syntax.
pub fn rule_text(r: &Rule) -> String {
    let mut parts: Vec<String> = Vec::new();
    for m in &r.matches {
        parts.push(match m {
            Match::Family(Family::V4) => "meta nfproto ipv4".into(),
            Match::Family(Family::V6) => "meta nfproto ipv6".into(),
            Match::L4Proto { proto, negate } => format!("meta l4proto {}{proto}", neg(*negate)),
            Match::IfPrefix { dir, prefix } => format!(
                "{} \"{prefix}*\"",
                if *dir == IfDir::In {
                    "iifname"
                } else {
                    "oifname"
                }
            ),
            Match::Addr {
                side,
                family,
                set,
                negate,
            } => format!(
                "{} {} {}@{set}",
                ip_kw(*family),
                side_addr(*side),
                neg(*negate)
            ),
            Match::Prefix { side, net, negate } => {
                let family = Family::of(net);
                // nft prints a full-length prefix as a bare address.
                let net = if net.prefix_len() == net.max_prefix_len() {
                    net.addr().to_string()
                } else {
                    net.to_string()
                };
                format!(
                    "{} {} {}{net}",
                    ip_kw(family),
                    side_addr(*side),
                    neg(*negate)
                )
            }
            Match::Port { side, set, negate } => {
                format!("th {} {}@{set}", side_port(*side), neg(*negate))
            }
            Match::AddrProtoPort {
                side,
                family,
                set,
                negate,
            } => format!(
                "{} {} . meta l4proto . th {} {}@{set}",
                ip_kw(*family),
                side_addr(*side),
                side_port(*side),
                neg(*negate)
            ),
            Match::Icmp {
                icmp_type,
                code: None,
                negate,
            } => format!("@th,0,8 {}{icmp_type}", neg(*negate)),
            Match::Icmp {
                icmp_type,
                code: Some(c),
                negate,
            } => format!(
                "@th,0,16 {}0x{:04x}",
                neg(*negate),
                (u16::from(*icmp_type) << 8) | u16::from(*c)
            ),
            Match::MarkAny(m) => format!("meta mark & 0x{m:08x} != 0"),
            Match::CtState(bits) => format!("ct state {}", ct_names(*bits)),
        });
    }
    parts.push(match &r.stmt {
        Stmt::Accept => "accept".into(),
        Stmt::Drop => "drop".into(),
        Stmt::Return => "return".into(),
        Stmt::Jump(c) => format!("jump {c}"),
        Stmt::SetMarkReturn(b) => format!("meta mark set mark | 0x{b:08x} return"),
        Stmt::ClearMark(b) => format!("meta mark set mark & 0x{:08x}", !b),
        Stmt::Log(p) => format!("log prefix \"{p}\""),
        Stmt::Dispatch { dir, map } => format!(
            "{} vmap @{map}",
            if *dir == IfDir::In {
                "iifname"
            } else {
                "oifname"
            }
        ),
        Stmt::MasqueradeFullyRandom => "masquerade fully-random".into(),
    });
    if let Some(c) = &r.comment {
        parts.push(format!("comment \"{c}\""));
    }
    parts.join(" ")
}

fn chain_header(c: &Chain) -> String {
    match c.base {
        Some(b) => {
            let (ty, hook) = match b.hook {
                Hook::Input => ("filter", "input"),
                Hook::Forward => ("filter", "forward"),
                Hook::Postrouting => ("nat", "postrouting"),
            };
            format!(
                " type {ty} hook {hook} priority {}; policy accept;",
                b.priority
            )
        }
        None => String::new(),
    }
}

fn set_decl(kw: &str, name: &str, e: &SetElems) -> String {
    let els = elements(e);
    let kind = if matches!(e, SetElems::IfGoto(_)) {
        "map"
    } else {
        kw
    };
    if els.is_empty() {
        format!("{kind} {name} {{ {} }}", set_type(e))
    } else {
        format!("{kind} {name} {{ {} elements = {{ {els} }} }}", set_type(e))
    }
}

/// A script that replaces the whole table atomically: it creates the table if
/// missing, deletes it, and defines it again, in one transaction.
pub fn render_full(rs: &Ruleset) -> String {
    let t = &rs.table;
    let mut s = String::new();
    let _ = writeln!(s, "table inet {t}");
    let _ = writeln!(s, "delete table inet {t}");
    let _ = writeln!(s, "table inet {t} {{");
    // Chains first (empty), so map elements and jumps can refer to them.
    for (name, c) in &rs.chains {
        let _ = writeln!(s, "  chain {name} {{{} }}", chain_header(c));
    }
    for name in rs.set_order() {
        let _ = writeln!(s, "  {}", set_decl("set", name, &rs.sets[name]));
    }
    for (name, c) in &rs.chains {
        if c.rules.is_empty() {
            continue;
        }
        let _ = writeln!(s, "  chain {name} {{");
        for r in &c.rules {
            let _ = writeln!(s, "    {}", rule_text(r));
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// A script applying `d` to the installed table `table`, in one transaction.
pub fn render_diff(table: &str, d: &Diff) -> String {
    let mut s = String::new();
    let t = format!("inet {table}");
    for (name, e) in &d.add_sets {
        let _ = writeln!(s, "add {}", set_decl("set", &format!("{t} {name}"), e));
    }
    for (name, c) in &d.add_chains {
        let _ = writeln!(s, "add chain {t} {name} {{{} }}", chain_header(c));
    }
    for name in d.replace_chains.keys().chain(d.del_chains.iter()) {
        let _ = writeln!(s, "flush chain {t} {name}");
    }
    for (name, c) in d.add_chains.iter().chain(d.replace_chains.iter()) {
        for r in &c.rules {
            let _ = writeln!(s, "add rule {t} {name} {}", rule_text(r));
        }
    }
    for (name, e) in &d.reload_sets {
        let _ = writeln!(s, "flush set {t} {name}");
        let els = elements(e);
        if !els.is_empty() {
            let _ = writeln!(s, "add element {t} {name} {{ {els} }}");
        }
    }
    for (name, e) in &d.del_elems {
        let els = match e {
            // Map deletions name the key only.
            SetElems::IfGoto(m) => m
                .keys()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", "),
            other => elements(other),
        };
        let _ = writeln!(s, "delete element {t} {name} {{ {els} }}");
    }
    for (name, e) in &d.add_elems {
        let _ = writeln!(s, "add element {t} {name} {{ {} }}", elements(e));
    }
    for name in &d.del_chains {
        let _ = writeln!(s, "delete chain {t} {name}");
    }
    for name in &d.del_sets {
        let _ = writeln!(s, "delete set {t} {name}");
    }
    s
}

/// Runs `nft` on a script, optionally inside a named network namespace
/// (`ip netns exec`), optionally only checking it (`-c`).
#[derive(Clone, Debug, Default)]
pub struct NftCli {
    /// Named netns to run in (None: the current one).
    pub netns: Option<String>,
}

impl NftCli {
    fn command(&self, args: &[&str]) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nft"]).args(args);
                c
            }
            None => {
                let mut c = Command::new("nft");
                c.args(args);
                c
            }
        }
    }

    fn run(&self, args: &[&str], stdin: &str) -> Result<String, Error> {
        let what = format!("nft {}", args.join(" "));
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Nft {
                command: what.clone(),
                stderr: e.to_string(),
            })?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(stdin.as_bytes()).map_err(|e| Error::Nft {
                command: what.clone(),
                stderr: e.to_string(),
            })?;
        }
        let out = child.wait_with_output().map_err(|e| Error::Nft {
            command: what.clone(),
            stderr: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(Error::Nft {
                command: what,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `nft -f -` of a script (one transaction).
    pub fn apply(&self, script: &str) -> Result<(), Error> {
        self.run(&["-f", "-"], script).map(|_| ())
    }

    /// `nft -c -f -`: validates a script against the kernel without applying it.
    pub fn check(&self, script: &str) -> Result<(), Error> {
        self.run(&["-c", "-f", "-"], script).map(|_| ())
    }

    /// `nft -j list ruleset`.
    pub fn list_json(&self) -> Result<String, Error> {
        self.run(&["-j", "list", "ruleset"], "")
    }

    /// `nft list table inet <table>`.
    pub fn list_table(&self, table: &str) -> Result<String, Error> {
        self.run(&["list", "table", "inet", table], "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::MARK_PASS;

    #[test]
    fn rules_render_as_nft_syntax() {
        let r = Rule::new(
            vec![
                Match::Family(Family::V4),
                Match::L4Proto {
                    proto: 6,
                    negate: false,
                },
                Match::Addr {
                    side: Side::Src,
                    family: Family::V4,
                    set: "s".into(),
                    negate: true,
                },
                Match::Port {
                    side: Side::Dst,
                    set: "p".into(),
                    negate: false,
                },
            ],
            Stmt::SetMarkReturn(MARK_PASS),
        )
        .comment("policy a/b rule 0");
        assert_eq!(
            rule_text(&r),
            "meta nfproto ipv4 meta l4proto 6 ip saddr != @s th dport @p meta mark set mark | 0x00020000 return comment \"policy a/b rule 0\""
        );
        let r = Rule::new(
            vec![Match::Icmp {
                icmp_type: 8,
                code: Some(1),
                negate: true,
            }],
            Stmt::ClearMark(MARK_PASS),
        );
        assert_eq!(
            rule_text(&r),
            "@th,0,16 != 0x0801 meta mark set mark & 0xfffdffff"
        );
    }

    #[test]
    fn interval_elements_are_merged_ranges() {
        let e = SetElems::Net4(
            ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.1/32"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        );
        assert_eq!(elements(&e), "10.0.0.0-10.255.255.255, 192.0.2.1");
        let p = SetElems::Ports([(80, 80), (81, 90), (443, 443)].into_iter().collect());
        assert_eq!(elements(&p), "80-90, 443");
    }
}
