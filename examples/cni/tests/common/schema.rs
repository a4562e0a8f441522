//! The CNI specification's JSON objects (SPEC.md, "Result Types" and
//! "Error"), written as code: required fields, types, allowed values, and no
//! fields the spec does not define. Each checker returns the violations found
//! (empty = valid), so a test shows all of them at once.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

/// Panics listing `violations` together with the document.
pub fn assert_valid(violations: Vec<String>, doc: &Value) {
    assert!(
        violations.is_empty(),
        "schema violations: {violations:#?}\nin {doc:#}"
    );
}

const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

struct Ctx {
    out: Vec<String>,
}

impl Ctx {
    fn bad(&mut self, at: &str, what: impl std::fmt::Display) {
        self.out.push(format!("{at}: {what}"));
    }

    fn object<'a>(&mut self, at: &str, v: &'a Value) -> Option<&'a Map<String, Value>> {
        let o = v.as_object();
        if o.is_none() {
            self.bad(at, "must be an object");
        }
        o
    }

    fn only_keys(&mut self, at: &str, o: &Map<String, Value>, allowed: &[&str]) {
        for k in o.keys() {
            if !allowed.contains(&k.as_str()) {
                self.bad(at, format!("unknown field {k:?} (allowed: {allowed:?})"));
            }
        }
    }

    fn string<'a>(
        &mut self,
        at: &str,
        o: &'a Map<String, Value>,
        k: &str,
        required: bool,
    ) -> Option<&'a str> {
        match o.get(k) {
            None if required => {
                self.bad(at, format!("missing required string {k:?}"));
                None
            }
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                self.bad(at, format!("{k:?} must be a string, is {other}"));
                None
            }
        }
    }

    fn uint(&mut self, at: &str, o: &Map<String, Value>, k: &str, required: bool) -> Option<u64> {
        match o.get(k) {
            None if required => {
                self.bad(at, format!("missing required integer {k:?}"));
                None
            }
            None => None,
            Some(v) => {
                let n = v.as_u64();
                if n.is_none() {
                    self.bad(at, format!("{k:?} must be a non-negative integer, is {v}"));
                }
                n
            }
        }
    }

    fn array<'a>(
        &mut self,
        at: &str,
        o: &'a Map<String, Value>,
        k: &str,
        required: bool,
    ) -> &'a [Value] {
        match o.get(k) {
            None => {
                if required {
                    self.bad(at, format!("missing required array {k:?}"));
                }
                &[]
            }
            Some(Value::Array(a)) => a,
            Some(other) => {
                self.bad(at, format!("{k:?} must be an array, is {other}"));
                &[]
            }
        }
    }

    fn version(&mut self, at: &str, o: &Map<String, Value>) -> Option<String> {
        let v = self.string(at, o, "cniVersion", true)?;
        if !VERSIONS.contains(&v) {
            self.bad(at, format!("cniVersion {v:?} is not a CNI version"));
        }
        Some(v.to_owned())
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// An ADD result (`ipam_only`: the IPAM plugin's result, which has no
/// interfaces and whose `ips` must not reference any).
pub fn result(v: &Value, ipam_only: bool) -> Vec<String> {
    let mut c = Ctx { out: Vec::new() };
    let Some(o) = c.object("result", v) else {
        return c.out;
    };
    c.only_keys(
        "result",
        o,
        &["cniVersion", "interfaces", "ips", "routes", "dns"],
    );
    let version = c.version("result", o).unwrap_or_default();
    let pre_1 = version.starts_with("0.");
    let interfaces = c.array("result", o, "interfaces", false);
    if ipam_only && !interfaces.is_empty() {
        c.bad("result", "an IPAM plugin's result must not list interfaces");
    }
    for (i, itf) in interfaces.iter().enumerate() {
        let at = format!("interfaces[{i}]");
        let Some(io) = c.object(&at, itf) else {
            continue;
        };
        c.only_keys(
            &at,
            io,
            &["name", "mac", "mtu", "sandbox", "socketPath", "pciID"],
        );
        match c.string(&at, io, "name", true) {
            Some("") => c.bad(&at, "name must not be empty"),
            Some(n) if n.len() > 15 => c.bad(&at, format!("name {n:?} longer than 15 bytes")),
            _ => {}
        }
        if let Some(m) = c.string(&at, io, "mac", false)
            && !is_mac(m)
        {
            c.bad(&at, format!("mac {m:?} is not a MAC address"));
        }
        if let Some(mtu) = c.uint(&at, io, "mtu", false)
            && !(68..=65535).contains(&mtu)
        {
            c.bad(&at, format!("mtu {mtu} out of range"));
        }
        if let Some(s) = c.string(&at, io, "sandbox", false)
            && !s.starts_with('/')
        {
            c.bad(&at, format!("sandbox {s:?} is not a path"));
        }
    }
    let ips = c.array("result", o, "ips", true);
    for (i, ip) in ips.iter().enumerate() {
        let at = format!("ips[{i}]");
        let Some(io) = c.object(&at, ip) else {
            continue;
        };
        c.only_keys(&at, io, &["version", "address", "gateway", "interface"]);
        let addr = c.string(&at, io, "address", true).and_then(|s| {
            let n = s.parse::<IpNet>().ok();
            if n.is_none() {
                c.bad(&at, format!("address {s:?} is not address/prefix"));
            }
            n
        });
        match (pre_1, c.string(&at, io, "version", pre_1)) {
            (false, Some(_)) => c.bad(&at, "version is not allowed from cniVersion 1.0.0"),
            (true, Some(v)) => {
                let want = match addr {
                    Some(IpNet::V4(_)) => "4",
                    _ => "6",
                };
                if v != want {
                    c.bad(&at, format!("version {v:?} does not match the address"));
                }
            }
            _ => {}
        }
        if let Some(g) = c.string(&at, io, "gateway", false) {
            match g.parse::<IpAddr>() {
                Err(_) => c.bad(&at, format!("gateway {g:?} is not an IP address")),
                Ok(g) => {
                    if addr.is_some_and(|a| a.addr().is_ipv4() != g.is_ipv4()) {
                        c.bad(&at, "gateway and address are of different families");
                    }
                }
            }
        }
        if let Some(idx) = c.uint(&at, io, "interface", false)
            && idx as usize >= interfaces.len()
        {
            c.bad(
                &at,
                format!("interface {idx} is not an index into interfaces"),
            );
        }
    }
    for (i, r) in c.array("result", o, "routes", false).iter().enumerate() {
        let at = format!("routes[{i}]");
        let Some(ro) = c.object(&at, r) else { continue };
        c.only_keys(
            &at,
            ro,
            &["dst", "gw", "mtu", "advmss", "priority", "table", "scope"],
        );
        if let Some(d) = c.string(&at, ro, "dst", true)
            && d.parse::<IpNet>().is_err()
        {
            c.bad(&at, format!("dst {d:?} is not a CIDR"));
        }
        if let Some(g) = c.string(&at, ro, "gw", false)
            && g.parse::<IpAddr>().is_err()
        {
            c.bad(&at, format!("gw {g:?} is not an IP address"));
        }
        for k in ["mtu", "advmss", "priority", "table", "scope"] {
            c.uint(&at, ro, k, false);
        }
    }
    if let Some(d) = o.get("dns") {
        let at = "dns";
        if let Some(dobj) = c.object(at, d) {
            c.only_keys(at, dobj, &["nameservers", "domain", "search", "options"]);
            c.string(at, dobj, "domain", false);
            for k in ["nameservers", "search", "options"] {
                for (i, s) in c.array(at, dobj, k, false).iter().enumerate() {
                    if !s.is_string() {
                        c.bad(at, format!("{k}[{i}] must be a string"));
                    }
                }
            }
        }
    }
    c.out
}

/// An error reply.
pub fn error(v: &Value) -> Vec<String> {
    let mut c = Ctx { out: Vec::new() };
    let Some(o) = c.object("error", v) else {
        return c.out;
    };
    c.only_keys("error", o, &["cniVersion", "code", "msg", "details"]);
    c.version("error", o);
    if let Some(code) = c.uint("error", o, "code", true)
        && code == 0
    {
        c.bad("error", "code 0 is not an error");
    }
    if c.string("error", o, "msg", true) == Some("") {
        c.bad("error", "msg must not be empty");
    }
    c.string("error", o, "details", false);
    c.out
}

/// A VERSION reply.
pub fn version(v: &Value) -> Vec<String> {
    let mut c = Ctx { out: Vec::new() };
    let Some(o) = c.object("version", v) else {
        return c.out;
    };
    c.only_keys("version", o, &["cniVersion", "supportedVersions"]);
    c.version("version", o);
    let sv = c.array("version", o, "supportedVersions", true);
    if sv.is_empty() {
        c.bad("version", "supportedVersions must not be empty");
    }
    for (i, s) in sv.iter().enumerate() {
        match s.as_str() {
            Some(s) if VERSIONS.contains(&s) => {}
            _ => c.bad(
                "version",
                format!("supportedVersions[{i}] = {s} is not a CNI version"),
            ),
        }
    }
    c.out
}
