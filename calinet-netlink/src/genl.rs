//! Generic netlink: the `struct genlmsghdr` family header and resolving a
//! family's id by name through the controller.
#![forbid(unsafe_code)]

use crate::ack::parse_error;
use crate::consts::{
    CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_CMD_GETFAMILY, GENL_HDRLEN, GENL_ID_CTRL,
    NLM_F_REQUEST, NLMSG_ERROR,
};
use crate::error::{Error, Result};
use crate::message::{Writer, attributes, messages};

/// `struct genlmsghdr`: command, version, reserved.
#[inline]
pub fn genl_header(cmd: u8, version: u8) -> [u8; 4] {
    [cmd, version, 0, 0]
}

/// Writes `CTRL_CMD_GETFAMILY` for the family called `name`.
pub fn get_family_request(w: &mut Writer, name: &str, seq: u32) {
    let m = w.begin_message(GENL_ID_CTRL, NLM_F_REQUEST, seq);
    w.family_header(&genl_header(CTRL_CMD_GETFAMILY, 1));
    w.attr_str(CTRL_ATTR_FAMILY_NAME, name);
    w.end_message(m);
}

/// The family id in the controller's answer about `name`: `Ok(None)` when
/// the kernel has no such family (`ENOENT`).
pub fn parse_family_id(name: &str, reply: &[u8]) -> Result<Option<u16>> {
    for msg in messages(reply) {
        let msg = msg?;
        if msg.ty == NLMSG_ERROR {
            let e = parse_error(msg.flags, msg.payload)?;
            match e.nack() {
                None => continue,
                Some(n) if n.errno == libc::ENOENT => return Ok(None),
                Some(n) => return Err(n.into_error(format!("genl get family {name}"))),
            }
        }
        if msg.ty == GENL_ID_CTRL {
            for a in attributes(msg.payload.get(GENL_HDRLEN..).unwrap_or_default()) {
                let a = a?;
                if a.ty == CTRL_ATTR_FAMILY_ID {
                    return a.u16().map(Some);
                }
            }
        }
    }
    Err(Error::Malformed {
        context: format!("genl get family {name}"),
        reason: "answer without CTRL_ATTR_FAMILY_ID".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_request_and_reply_round_trip() {
        let mut w = Writer::new();
        get_family_request(&mut w, "wireguard", 1);
        let req = w.finish().unwrap();
        let m = messages(&req).next().unwrap().unwrap();
        assert_eq!((m.ty, m.flags), (GENL_ID_CTRL, NLM_F_REQUEST));
        let a = attributes(&m.payload[GENL_HDRLEN..])
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(a.str().unwrap(), "wireguard");

        let mut w = Writer::new();
        let r = w.begin_message(GENL_ID_CTRL, 0, 1);
        w.family_header(&genl_header(1, 2));
        w.attr_str(CTRL_ATTR_FAMILY_NAME, "wireguard");
        w.attr_u16(CTRL_ATTR_FAMILY_ID, 27);
        w.end_message(r);
        assert_eq!(parse_family_id("wireguard", w.bytes()).unwrap(), Some(27));

        let mut w = Writer::new();
        let e = w.begin_message(NLMSG_ERROR, 0x100, 1);
        w.family_header(&(-libc::ENOENT).to_ne_bytes());
        let echoed = w.begin_message(GENL_ID_CTRL, NLM_F_REQUEST, 1);
        w.end_message(echoed);
        w.end_message(e);
        assert_eq!(parse_family_id("wireguard", w.bytes()).unwrap(), None);
    }
}
