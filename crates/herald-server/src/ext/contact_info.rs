//! XEP-0157: Contact Addresses for XMPP Services — the `[contact]` addresses as an XEP-0128
//! `http://jabber.org/network/serverinfo` form in the server's disco#info.
//!
//! This module owns the serverinfo FORM_TYPE: XEP-0128 allows one form per FORM_TYPE, so
//! other serverinfo fields belong here too.

use herald_core::ns;
use herald_xml::Element;

use super::disco::{result_form, ServerInfo};
use super::IqRegistry;
use crate::Server;

pub const SERVERINFO: &str = "http://jabber.org/network/serverinfo";

pub fn register(r: &mut IqRegistry) {
    r.server_info.push(server_info);
}

/// Adds the form when the domain has at least one address; fields without addresses are
/// left out.
fn server_info(server: &Server, domain: &str, info: &mut ServerInfo) {
    let addresses = server.settings.raw.contact.for_domain(domain);
    if addresses.is_empty() {
        return;
    }
    let mut form = result_form(SERVERINFO);
    for (var, list) in addresses.fields() {
        if list.is_empty() {
            continue;
        }
        let mut field = Element::new("field", ns::DATA_FORMS)
            .with_attr("var", var)
            .with_attr("type", "list-multi");
        for uri in list {
            field.push(Element::new("value", ns::DATA_FORMS).with_text(uri.as_str()));
        }
        form.push(field);
    }
    info.forms.push(form);
}
