//! BIRD's control protocol, spoken over its unix socket (what `birdc` does).
//!
//! Every reply line is `DDDD-text` (more follows), `DDDD text` (the reply's
//! last line) or ` text` (continues the previous code). Codes 0xxx report
//! success, 1xxx/2xxx carry data, 8xxx and 9xxx are errors.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::error::ControlError;

/// One reply: its lines as (code, text), the last line's code first-class.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reply {
    /// Every line with its code (continuation lines carry the previous code).
    pub lines: Vec<(u16, String)>,
    /// The code of the final line.
    pub code: u16,
}

impl Reply {
    /// The text of lines with `code`.
    pub fn texts(&self, code: u16) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(move |(c, _)| *c == code)
            .map(|(_, t)| t.as_str())
    }
}

/// One protocol of `show protocols all`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProtocolStatus {
    /// Protocol name (`Mesh_198_51_100_11`).
    pub name: String,
    /// Protocol kind (`BGP`, `Kernel`, `Static`, ...).
    pub proto: String,
    /// `up`, `start`, `down`, ...
    pub state: String,
    /// When the state last changed, as BIRD prints it.
    pub since: String,
    /// `Established`, `Active`, `Connect`, ... (BGP), possibly with detail.
    pub info: String,
    /// The protocol's description (the renderer puts the peer type there).
    pub description: Option<String>,
    /// Routes imported from the peer, summed over channels.
    pub routes_imported: u32,
    /// Routes exported to the peer, summed over channels.
    pub routes_exported: u32,
}

impl ProtocolStatus {
    /// Whether a BGP session is up.
    pub fn is_established(&self) -> bool {
        self.info.split_whitespace().next() == Some("Established")
    }
}

/// One route of `show route`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BirdRoute {
    /// The destination.
    pub net: IpNet,
    /// The protocol that gave it (`Mesh_...`, `calinet_blocks4`).
    pub protocol: String,
    /// Whether it is the best route for the destination.
    pub primary: bool,
    /// Its next hop, if it has one.
    pub via: Option<IpAddr>,
}

/// A connection to BIRD's control socket.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlSocket {
    /// Connects and reads BIRD's greeting (`0001 BIRD 2.0.12 ready.`).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ControlError> {
        let io = |what| {
            let path = path.to_path_buf();
            move |source| ControlError::Io { what, path, source }
        };
        let stream = UnixStream::connect(path).map_err(io("connect to BIRD control socket"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io("set timeout on BIRD control socket"))?;
        let writer = stream
            .try_clone()
            .map_err(io("clone BIRD control socket"))?;
        let mut socket = ControlSocket {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        };
        let hello = socket.read_reply("<greeting>")?;
        if hello.code != 1 {
            return Err(ControlError::Protocol {
                command: "<greeting>".into(),
                line: format!("{:?}", hello.lines),
            });
        }
        Ok(socket)
    }

    /// Sends one command and reads its whole reply; an 8xxx/9xxx reply is
    /// [`ControlError::Rejected`].
    pub fn command(&mut self, command: &str) -> Result<Reply, ControlError> {
        let path = self.path.clone();
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|source| ControlError::Io {
                what: "write to BIRD control socket",
                path,
                source,
            })?;
        let reply = self.read_reply(command)?;
        if reply.code >= 8000 {
            let message = reply
                .lines
                .last()
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            return Err(ControlError::Rejected {
                command: command.to_owned(),
                code: reply.code,
                message,
            });
        }
        Ok(reply)
    }

    /// `configure`: BIRD re-reads its configuration file and applies the
    /// difference without restarting (sessions whose options did not change
    /// stay up). A configuration BIRD rejects leaves the running one in place.
    pub fn configure(&mut self) -> Result<Reply, ControlError> {
        self.command("configure")
    }

    /// `show protocols all`, parsed.
    pub fn protocols(&mut self) -> Result<Vec<ProtocolStatus>, ControlError> {
        let reply = self.command("show protocols all")?;
        Ok(parse_protocols(&reply))
    }

    /// `show route`, parsed (every table, every route).
    pub fn routes(&mut self) -> Result<Vec<BirdRoute>, ControlError> {
        let reply = self.command("show route all")?;
        Ok(parse_routes(&reply))
    }

    /// `down`: BIRD shuts down cleanly (peers get a Cease; with `persist`,
    /// kernel routes stay).
    pub fn down(&mut self) -> Result<(), ControlError> {
        match self.command("down") {
            // BIRD may close the socket before or after its last line.
            Ok(_) | Err(ControlError::Io { .. }) | Err(ControlError::Protocol { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn read_reply(&mut self, command: &str) -> Result<Reply, ControlError> {
        let mut lines = Vec::new();
        let mut last = 0u16;
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|source| ControlError::Io {
                    what: "read from BIRD control socket",
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(ControlError::Protocol {
                    command: command.to_owned(),
                    line: "<connection closed>".into(),
                });
            }
            let line = line.trim_end_matches(['\n', '\r']);
            match parse_line(line) {
                Some(Line::Code(code, more, text)) => {
                    last = code;
                    lines.push((code, text.to_owned()));
                    if !more {
                        return Ok(Reply { lines, code });
                    }
                }
                Some(Line::Continued(text)) => lines.push((last, text.to_owned())),
                None => {
                    return Err(ControlError::Protocol {
                        command: command.to_owned(),
                        line: line.to_owned(),
                    });
                }
            }
        }
    }
}

enum Line<'a> {
    Code(u16, bool, &'a str),
    Continued(&'a str),
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    if let Some(rest) = line.strip_prefix(' ') {
        return Some(Line::Continued(rest));
    }
    let bytes = line.as_bytes();
    if bytes.len() >= 5 && bytes[..4].iter().all(u8::is_ascii_digit) {
        let code = line[..4].parse().ok()?;
        return match bytes[4] {
            b'-' => Some(Line::Code(code, true, &line[5..])),
            b' ' => Some(Line::Code(code, false, &line[5..])),
            _ => None,
        };
    }
    if bytes.len() == 4 && bytes.iter().all(u8::is_ascii_digit) {
        return Some(Line::Code(line.parse().ok()?, false, ""));
    }
    None
}

/// Parses `show protocols all`: a 1002 line per protocol (`name proto table
/// state date time info...`, with `timeformat protocol iso long`), then 1006
/// detail lines.
pub(crate) fn parse_protocols(reply: &Reply) -> Vec<ProtocolStatus> {
    let mut out: Vec<ProtocolStatus> = Vec::new();
    for (code, text) in &reply.lines {
        match code {
            1002 => {
                let mut words = text.split_whitespace();
                let name = words.next().unwrap_or_default().to_owned();
                let proto = words.next().unwrap_or_default().to_owned();
                let _table = words.next();
                let state = words.next().unwrap_or_default().to_owned();
                // `2026-12-06 05:12:28` (iso long) or `05:12:28.123` (BIRD's
                // default): a date takes the next word along.
                let mut since = words.next().unwrap_or_default().to_owned();
                if since.len() == 10
                    && since.as_bytes().get(4) == Some(&b'-')
                    && let Some(time) = words.next()
                {
                    since = format!("{since} {time}");
                }
                let info = words.collect::<Vec<_>>().join(" ");
                out.push(ProtocolStatus {
                    name,
                    proto,
                    state,
                    since,
                    info,
                    ..Default::default()
                });
            }
            1006 => {
                let Some(p) = out.last_mut() else { continue };
                let t = text.trim();
                if let Some(d) = t.strip_prefix("Description:") {
                    p.description = Some(d.trim().to_owned());
                } else if let Some(r) = t.strip_prefix("Routes:") {
                    // "1 imported, 2 exported, 1 preferred"
                    for part in r.split(',') {
                        let mut w = part.split_whitespace();
                        let n: u32 = w.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                        match w.next() {
                            Some("imported") => p.routes_imported += n,
                            Some("exported") => p.routes_exported += n,
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Parses `show route` / `show route all`: a 1007 line starts a route (`net
/// type [proto time] * (pref)`, the net omitted for further routes to the
/// same destination), an indented 1007 line carries its next hop (`via
/// 198.51.100.11 on eth0`); attribute lines (1008, 1012) are skipped.
pub(crate) fn parse_routes(reply: &Reply) -> Vec<BirdRoute> {
    let mut out: Vec<BirdRoute> = Vec::new();
    let mut current: Option<IpNet> = None;
    for (code, text) in &reply.lines {
        match code {
            1007 if text.starts_with(char::is_whitespace) => {
                // A next hop: "\tvia 198.51.100.11 on eth0" or "\tdev eth0".
                if let (Some(r), Some(v)) = (out.last_mut(), text.trim().strip_prefix("via ")) {
                    r.via = v.split_whitespace().next().and_then(|ip| ip.parse().ok());
                }
            }
            1007 => {
                let mut words = text.split_whitespace().peekable();
                if let Some(net) = words.peek().and_then(|w| w.parse::<IpNet>().ok()) {
                    current = Some(net);
                    words.next();
                } else if text.starts_with("Table") {
                    current = None;
                    continue;
                }
                let Some(net) = current else { continue };
                let rest: Vec<&str> = words.collect();
                let protocol = rest
                    .iter()
                    .find_map(|w| w.strip_prefix('['))
                    .unwrap_or_default()
                    .to_owned();
                out.push(BirdRoute {
                    net,
                    protocol,
                    primary: rest.contains(&"*"),
                    via: None,
                });
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Reply {
        let mut lines = Vec::new();
        let mut last = 0;
        let mut code = 0;
        for l in text.lines() {
            match parse_line(l).unwrap() {
                Line::Code(c, _, t) => {
                    last = c;
                    code = c;
                    lines.push((c, t.to_owned()));
                }
                Line::Continued(t) => lines.push((last, t.to_owned())),
            }
        }
        Reply { lines, code }
    }

    // Captured from BIRD 2.0.12 on n1 of tests/mesh_netns.rs (a three-node
    // mesh), through this module's reader, trimmed to two protocols.
    const PROTOCOLS: &str = "\
2002-Name       Proto      Table      State  Since         Info
1002-calinet_kernel4 Kernel     master4    up     2026-12-06 05:12:08  
1006-  Channel ipv4
     State:          UP
     Routes:         1 imported, 3 exported, 1 preferred
1002-Mesh_198_51_100_11 BGP        ---        up     2026-12-06 05:12:28  Established   
1006-  Description:    node-to-node mesh n2
   BGP state:          Established
     Neighbor address: 198.51.100.11
   Channel ipv4
     Routes:         1 imported, 1 exported, 1 preferred
1002-Mesh_198_51_100_12 BGP        ---        start  2026-12-06 05:12:28  Active        Socket: Connection refused
1006-  Description:    node-to-node mesh n3
0000 
";

    const ROUTES: &str = "\
1007-Table master4:
1007-0.0.0.0/0            unicast [calinet_kernel4 05:12:26.379] * (10)
1007-\tvia 198.51.100.1 on eth0
1008-\tType: inherit univ
1012-\tKernel.source: 3
1007-10.65.1.0/26         blackhole [calinet_blocks4 05:12:26.378] * (200)
1008-\tType: static univ
1007-198.51.100.0/24      unicast [calinet_direct4 05:12:26.379] * (240)
1007-\tdev eth0
1007-10.65.3.0/26         unicast [Mesh_198_51_100_12 05:12:28.439] * (100) [i]
1007-\tvia 198.51.100.12 on eth0
1008-\tType: BGP univ
1012-\tBGP.next_hop: 198.51.100.12
0000 
";

    #[test]
    fn parses_show_protocols_all() {
        let p = parse_protocols(&reply(PROTOCOLS));
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].name, "calinet_kernel4");
        assert_eq!((p[0].routes_imported, p[0].routes_exported), (1, 3));
        assert_eq!(p[1].name, "Mesh_198_51_100_11");
        assert_eq!(p[1].proto, "BGP");
        assert_eq!(p[1].state, "up");
        assert_eq!(p[1].since, "2026-12-06 05:12:28");
        assert!(p[1].is_established());
        assert_eq!(p[1].description.as_deref(), Some("node-to-node mesh n2"));
        assert_eq!((p[1].routes_imported, p[1].routes_exported), (1, 1));
        assert_eq!(p[2].info, "Active Socket: Connection refused");
        assert!(!p[2].is_established());
    }

    #[test]
    fn parses_default_time_format() {
        // BIRD's default protocol time format (a config without timeformat).
        let p = parse_protocols(&reply(
            "2002-Name       Proto      Table      State  Since         Info\n\
             1002-peer       BGP        ---        up     05:28:01.483  Established   \n\
             0000 \n",
        ));
        assert_eq!(p[0].since, "05:28:01.483");
        assert!(p[0].is_established());
    }

    #[test]
    fn parses_show_route() {
        let r = parse_routes(&reply(ROUTES));
        let got: Vec<_> = r
            .iter()
            .map(|r| {
                (
                    r.net.to_string(),
                    r.protocol.as_str(),
                    r.via.map(|v| v.to_string()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "0.0.0.0/0".into(),
                    "calinet_kernel4",
                    Some("198.51.100.1".into())
                ),
                ("10.65.1.0/26".into(), "calinet_blocks4", None),
                ("198.51.100.0/24".into(), "calinet_direct4", None),
                (
                    "10.65.3.0/26".into(),
                    "Mesh_198_51_100_12",
                    Some("198.51.100.12".into())
                ),
            ]
        );
        assert!(r.iter().all(|r| r.primary));
    }

    #[test]
    fn parses_line_kinds() {
        assert!(matches!(
            parse_line("0001 BIRD 2.0.12 ready."),
            Some(Line::Code(1, false, "BIRD 2.0.12 ready."))
        ));
        assert!(matches!(
            parse_line("0002-Reading configuration"),
            Some(Line::Code(2, true, _))
        ));
        assert!(matches!(
            parse_line("  BGP state: Established"),
            Some(Line::Continued(" BGP state: Established"))
        ));
        assert!(matches!(parse_line("0000"), Some(Line::Code(0, false, ""))));
        assert!(parse_line("garbage").is_none());
    }
}
