//! Routing the device needs (pure): its MTU, its table, and the fwmark rule.
