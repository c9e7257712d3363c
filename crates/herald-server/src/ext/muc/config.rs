//! XEP-0045 room configuration (the `muc#roomconfig` form), affiliations and roles, and the
//! room record kept in storage for persistent rooms.

use herald_core::{ns, StanzaError, StanzaErrorCondition as Cond};
use herald_xml::Element;

use crate::config::MucSection;

pub const MUC: &str = "http://jabber.org/protocol/muc";
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const MUC_UNIQUE: &str = "http://jabber.org/protocol/muc#unique";
pub const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
pub const ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
pub const REQUEST: &str = "http://jabber.org/protocol/muc#request";
pub const REGISTER_FORM: &str = "http://jabber.org/protocol/muc#register";
pub const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
pub const MODERATE: &str = "urn:xmpp:message-moderate:1";
pub const RETRACT: &str = "urn:xmpp:message-retract:1";
pub const SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
pub const STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";
pub const CONFERENCE: &str = "jabber:x:conference";
/// Namespace of the room record Herald stores (not on the wire).
const RECORD: &str = "urn:x-herald:muc-room:1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// Who may send private messages (`muc#roomconfig_allowpm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    Nobody,
}

impl AllowPm {
    pub fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::Nobody => "none",
        }
    }

    fn parse(s: &str) -> Option<AllowPm> {
        Some(match s {
            "anyone" => AllowPm::Anyone,
            "participants" => AllowPm::Participants,
            "moderators" => AllowPm::Moderators,
            "none" => AllowPm::Nobody,
            _ => return None,
        })
    }

    pub fn allows(self, role: Role) -> bool {
        match self {
            AllowPm::Anyone => role >= Role::Visitor,
            AllowPm::Participants => role >= Role::Participant,
            AllowPm::Moderators => role >= Role::Moderator,
            AllowPm::Nobody => false,
        }
    }
}

/// A room's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub lang: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    /// Set and non-empty means password-protected.
    pub password: Option<String>,
    /// 0 = only the service limit applies.
    pub max_users: u32,
    /// Real JIDs visible to everyone (non-anonymous) instead of to moderators only.
    pub whois_anyone: bool,
    /// Messages sent to a joining occupant (and kept in memory).
    pub history_length: u32,
    pub allow_pm: AllowPm,
    pub allow_invites: bool,
    pub change_subject: bool,
    /// Messages archived (XEP-0313) and history kept across restarts.
    pub logging: bool,
    /// Roles that may fetch the member list.
    pub member_list_roles: Vec<Role>,
}

impl RoomConfig {
    pub fn defaults(svc: &MucSection) -> RoomConfig {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            lang: String::new(),
            persistent: svc.default_persistent,
            public: svc.default_public,
            members_only: false,
            moderated: false,
            password: None,
            max_users: 0,
            whois_anyone: false,
            history_length: svc.history_length.min(svc.max_history),
            allow_pm: AllowPm::Anyone,
            allow_invites: false,
            change_subject: false,
            logging: svc.default_logging,
            member_list_roles: vec![Role::Moderator, Role::Participant],
        }
    }

    pub fn password_protected(&self) -> bool {
        self.password.as_deref().is_some_and(|p| !p.is_empty())
    }
}

fn field(var: &str, kind: &str, label: &str) -> Element {
    Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("type", kind)
        .with_attr("label", label)
}

fn value(v: &str) -> Element {
    Element::new("value", ns::DATA_FORMS).with_text(v)
}

fn boolean(var: &str, label: &str, v: bool) -> Element {
    field(var, "boolean", label).with_child(value(if v { "1" } else { "0" }))
}

fn text(var: &str, label: &str, v: &str) -> Element {
    field(var, "text-single", label).with_child(value(v))
}

fn option(label: &str, v: &str) -> Element {
    Element::new("option", ns::DATA_FORMS)
        .with_attr("label", label)
        .with_child(value(v))
}

fn hidden(var: &str, v: &str) -> Element {
    Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("type", "hidden")
        .with_child(value(v))
}

/// The `muc#roomconfig` form (XEP-0045 §10.2) filled with the current values; owner and
/// admin lists come from the affiliations.
pub fn config_form(c: &RoomConfig, owners: &[String], admins: &[String], max: u32) -> Element {
    let mut x = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(Element::new("title", ns::DATA_FORMS).with_text("Room configuration"))
        .with_child(hidden("FORM_TYPE", ROOMCONFIG))
        .with_child(text("muc#roomconfig_roomname", "Name", &c.name))
        .with_child(
            field("muc#roomconfig_roomdesc", "text-single", "Description")
                .with_child(value(&c.description)),
        )
        .with_child(text("muc#roomconfig_lang", "Language", &c.lang))
        .with_child(boolean(
            "muc#roomconfig_persistentroom",
            "Persistent (kept when empty)",
            c.persistent,
        ))
        .with_child(boolean(
            "muc#roomconfig_publicroom",
            "Listed in the room directory",
            c.public,
        ))
        .with_child(boolean(
            "muc#roomconfig_membersonly",
            "Members only",
            c.members_only,
        ))
        .with_child(boolean(
            "muc#roomconfig_moderatedroom",
            "Moderated (visitors need voice)",
            c.moderated,
        ))
        .with_child(boolean(
            "muc#roomconfig_passwordprotectedroom",
            "Password protected",
            c.password_protected(),
        ))
        .with_child(
            field("muc#roomconfig_roomsecret", "text-private", "Password")
                .with_child(value(c.password.as_deref().unwrap_or(""))),
        );
    let mut maxusers = field(
        "muc#roomconfig_maxusers",
        "list-single",
        "Maximum occupants",
    )
    .with_child(value(&if c.max_users == 0 {
        "none".to_string()
    } else {
        c.max_users.to_string()
    }));
    for n in [10u32, 20, 30, 50, 100, 200, 500, 1000, 2000, 5000, 10000] {
        if n <= max {
            maxusers.push(option(&n.to_string(), &n.to_string()));
        }
    }
    maxusers.push(option("No limit", "none"));
    x.push(maxusers);
    x.push(
        field(
            "muc#roomconfig_whois",
            "list-single",
            "Who may see real JIDs",
        )
        .with_child(value(if c.whois_anyone {
            "anyone"
        } else {
            "moderators"
        }))
        .with_child(option("Moderators", "moderators"))
        .with_child(option("Anyone", "anyone")),
    );
    x.push(text(
        "muc#maxhistoryfetch",
        "Messages of history sent on join",
        &c.history_length.to_string(),
    ));
    x.push(
        field(
            "muc#roomconfig_allowpm",
            "list-single",
            "Who may send private messages",
        )
        .with_child(value(c.allow_pm.as_str()))
        .with_child(option("Anyone", "anyone"))
        .with_child(option("Participants", "participants"))
        .with_child(option("Moderators", "moderators"))
        .with_child(option("Nobody", "none")),
    );
    x.push(boolean(
        "muc#roomconfig_allowinvites",
        "Occupants may invite others",
        c.allow_invites,
    ));
    x.push(boolean(
        "muc#roomconfig_changesubject",
        "Occupants may change the subject",
        c.change_subject,
    ));
    x.push(boolean(
        "muc#roomconfig_enablelogging",
        "Archive messages (searchable history)",
        c.logging,
    ));
    let mut getmemberlist = field(
        "muc#roomconfig_getmemberlist",
        "list-multi",
        "Roles that may see the member list",
    );
    for r in &c.member_list_roles {
        getmemberlist.push(value(r.as_str()));
    }
    for r in ["moderator", "participant", "visitor"] {
        getmemberlist.push(option(r, r));
    }
    x.push(getmemberlist);
    let mut o = field("muc#roomconfig_roomowners", "jid-multi", "Owners");
    for j in owners {
        o.push(value(j));
    }
    x.push(o);
    let mut a = field("muc#roomconfig_roomadmins", "jid-multi", "Admins");
    for j in admins {
        a.push(value(j));
    }
    x.push(a);
    x
}

/// Lists given in a submitted form that change affiliations.
#[derive(Default, Debug)]
pub struct SubmittedLists {
    pub owners: Option<Vec<String>>,
    pub admins: Option<Vec<String>>,
}

fn bad(text: impl Into<String>) -> StanzaError {
    StanzaError::new(Cond::NotAcceptable).with_text(text)
}

fn parse_bool(var: &str, v: &str) -> Result<bool, StanzaError> {
    match v {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(bad(format!("{var}: expected a boolean"))),
    }
}

/// Applies a submitted `muc#roomconfig` form to `c`. Fields not in the form keep their
/// value (§10.2: an empty submit form accepts the defaults — an instant room).
pub fn apply_form(
    c: &mut RoomConfig,
    form: &Element,
    max_users: u32,
    max_history: u32,
) -> Result<SubmittedLists, StanzaError> {
    let mut lists = SubmittedLists::default();
    let mut protected: Option<bool> = None;
    for f in form.elements().filter(|f| f.is("field", ns::DATA_FORMS)) {
        let var = f.attr("var").unwrap_or("");
        let values: Vec<String> = f
            .elements()
            .filter(|v| v.is("value", ns::DATA_FORMS))
            .map(|v| v.text().trim().to_string())
            .collect();
        let one = values.first().map(String::as_str).unwrap_or("");
        match var {
            "FORM_TYPE" if !one.is_empty() && one != ROOMCONFIG => {
                return Err(bad("FORM_TYPE must be muc#roomconfig"));
            }
            "muc#roomconfig_roomname" => c.name = limit(one, 200)?,
            "muc#roomconfig_roomdesc" => c.description = limit(one, 2000)?,
            "muc#roomconfig_lang" => c.lang = limit(one, 35)?,
            "muc#roomconfig_persistentroom" => c.persistent = parse_bool(var, one)?,
            "muc#roomconfig_publicroom" => c.public = parse_bool(var, one)?,
            "muc#roomconfig_membersonly" => c.members_only = parse_bool(var, one)?,
            "muc#roomconfig_moderatedroom" => c.moderated = parse_bool(var, one)?,
            "muc#roomconfig_passwordprotectedroom" => protected = Some(parse_bool(var, one)?),
            "muc#roomconfig_roomsecret" => {
                c.password = (!one.is_empty()).then(|| one.to_string());
                if one.len() > 256 {
                    return Err(bad("password too long"));
                }
            }
            "muc#roomconfig_maxusers" => {
                c.max_users = match one {
                    "" | "none" | "0" => 0,
                    n => {
                        let n: u32 = n
                            .parse()
                            .map_err(|_| bad("muc#roomconfig_maxusers: expected a number"))?;
                        if n > max_users {
                            return Err(bad(format!(
                                "muc#roomconfig_maxusers: at most {max_users}"
                            )));
                        }
                        n
                    }
                }
            }
            "muc#roomconfig_whois" => {
                c.whois_anyone = match one {
                    "anyone" => true,
                    "moderators" => false,
                    _ => return Err(bad("muc#roomconfig_whois: anyone or moderators")),
                }
            }
            "muc#maxhistoryfetch" | "muc#roomconfig_historylength" => {
                let n: u32 = one
                    .parse()
                    .map_err(|_| bad(format!("{var}: expected a number")))?;
                c.history_length = n.min(max_history);
            }
            "muc#roomconfig_allowpm" => {
                c.allow_pm = AllowPm::parse(one).ok_or_else(|| {
                    bad("muc#roomconfig_allowpm: anyone, participants, moderators or none")
                })?
            }
            "muc#roomconfig_allowinvites" => c.allow_invites = parse_bool(var, one)?,
            "muc#roomconfig_changesubject" => c.change_subject = parse_bool(var, one)?,
            "muc#roomconfig_enablelogging" | "mam" => c.logging = parse_bool(var, one)?,
            "muc#roomconfig_getmemberlist" => {
                let mut roles = Vec::new();
                for v in &values {
                    let r = Role::parse(v)
                        .filter(|r| *r != Role::None)
                        .ok_or_else(|| bad(format!("{var}: unknown role {v:?}")))?;
                    roles.push(r);
                }
                c.member_list_roles = roles;
            }
            "muc#roomconfig_roomowners" => lists.owners = Some(values),
            "muc#roomconfig_roomadmins" => lists.admins = Some(values),
            // Fields other servers offer that Herald does not act on are accepted and
            // ignored, so clients that echo a foreign form back still work.
            _ => {}
        }
    }
    if protected == Some(false) {
        c.password = None;
    } else if protected == Some(true) && !c.password_protected() {
        return Err(bad(
            "a password-protected room needs muc#roomconfig_roomsecret",
        ));
    }
    Ok(lists)
}

fn limit(v: &str, max: usize) -> Result<String, StanzaError> {
    if v.chars().count() > max {
        return Err(bad(format!("at most {max} characters")));
    }
    Ok(v.to_string())
}

/// What a persistent room keeps besides affiliations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRecord {
    pub config: RoomConfig,
    pub subject: String,
    /// Nick (or empty) of whoever set the subject.
    pub subject_by: String,
    /// Key of the room's XEP-0421 occupant ids (hex).
    pub secret: String,
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

impl RoomRecord {
    /// The opaque text stored with the room.
    pub fn to_text(&self) -> String {
        let c = &self.config;
        let roles: Vec<&str> = c.member_list_roles.iter().map(|r| r.as_str()).collect();
        let mut e = Element::new("room", RECORD)
            .with_attr("persistent", flag(c.persistent))
            .with_attr("public", flag(c.public))
            .with_attr("members-only", flag(c.members_only))
            .with_attr("moderated", flag(c.moderated))
            .with_attr("max-users", c.max_users.to_string())
            .with_attr(
                "whois",
                if c.whois_anyone {
                    "anyone"
                } else {
                    "moderators"
                },
            )
            .with_attr("history", c.history_length.to_string())
            .with_attr("allow-pm", c.allow_pm.as_str())
            .with_attr("allow-invites", flag(c.allow_invites))
            .with_attr("change-subject", flag(c.change_subject))
            .with_attr("logging", flag(c.logging))
            .with_attr("member-list", roles.join(" "))
            .with_attr("secret", self.secret.as_str());
        e.push(Element::new("name", RECORD).with_text(c.name.as_str()));
        e.push(Element::new("description", RECORD).with_text(c.description.as_str()));
        e.push(Element::new("lang", RECORD).with_text(c.lang.as_str()));
        if let Some(p) = &c.password {
            e.push(Element::new("password", RECORD).with_text(p.as_str()));
        }
        e.push(
            Element::new("subject", RECORD)
                .with_attr("by", self.subject_by.as_str())
                .with_text(self.subject.as_str()),
        );
        let mut out = Vec::with_capacity(512);
        // "" as the parent namespace: the root must carry its xmlns to parse back.
        e.write_to(&mut out, "");
        String::from_utf8(out).unwrap_or_default()
    }

    /// Parses a stored record; missing values take the service defaults.
    pub fn from_text(text: &str, svc: &MucSection) -> Option<RoomRecord> {
        let e = super::super::parse_fragment(text)?;
        if !e.is("room", RECORD) {
            return None;
        }
        let mut c = RoomConfig::defaults(svc);
        let b = |name: &str, d: bool| e.attr(name).map(|v| v == "1").unwrap_or(d);
        c.persistent = b("persistent", c.persistent);
        c.public = b("public", c.public);
        c.members_only = b("members-only", false);
        c.moderated = b("moderated", false);
        c.max_users = e
            .attr("max-users")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        c.whois_anyone = e.attr("whois") == Some("anyone");
        c.history_length = e
            .attr("history")
            .and_then(|v| v.parse().ok())
            .unwrap_or(c.history_length);
        c.allow_pm = e
            .attr("allow-pm")
            .and_then(AllowPm::parse)
            .unwrap_or(AllowPm::Anyone);
        c.allow_invites = b("allow-invites", false);
        c.change_subject = b("change-subject", false);
        c.logging = b("logging", c.logging);
        if let Some(roles) = e.attr("member-list") {
            c.member_list_roles = roles.split_whitespace().filter_map(Role::parse).collect();
        }
        let child = |n: &str| e.child(n, RECORD).map(|x| x.text().to_string());
        c.name = child("name").unwrap_or_default();
        c.description = child("description").unwrap_or_default();
        c.lang = child("lang").unwrap_or_default();
        c.password = child("password").filter(|p| !p.is_empty());
        let subject = e.child("subject", RECORD);
        Some(RoomRecord {
            config: c,
            subject: subject.map(|s| s.text().to_string()).unwrap_or_default(),
            subject_by: subject.and_then(|s| s.attr("by")).unwrap_or("").to_string(),
            secret: e.attr("secret").unwrap_or("").to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &[(&str, &[&str])]) -> Element {
        let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", "submit");
        for (var, values) in fields {
            let mut f = Element::new("field", ns::DATA_FORMS).with_attr("var", *var);
            for v in *values {
                f.push(value(v));
            }
            x.push(f);
        }
        x
    }

    #[test]
    fn record_round_trips() {
        let svc = MucSection::default();
        let mut c = RoomConfig::defaults(&svc);
        c.name = "Team <Ops> & co".into();
        c.description = "ünïcode ☃".into();
        c.password = Some("s3cret".into());
        c.members_only = true;
        c.max_users = 50;
        c.allow_pm = AllowPm::Moderators;
        c.member_list_roles = vec![Role::Moderator];
        let r = RoomRecord {
            config: c,
            subject: "Today: release".into(),
            subject_by: "alice".into(),
            secret: "abcd".into(),
        };
        assert_eq!(RoomRecord::from_text(&r.to_text(), &svc), Some(r));
    }

    #[test]
    fn form_applies_and_validates() {
        let svc = MucSection::default();
        let mut c = RoomConfig::defaults(&svc);
        apply_form(
            &mut c,
            &form(&[
                ("FORM_TYPE", &[ROOMCONFIG]),
                ("muc#roomconfig_persistentroom", &["1"]),
                ("muc#roomconfig_membersonly", &["true"]),
                ("muc#roomconfig_passwordprotectedroom", &["1"]),
                ("muc#roomconfig_roomsecret", &["pw"]),
                ("muc#roomconfig_maxusers", &["20"]),
                ("muc#roomconfig_whois", &["anyone"]),
                ("muc#roomconfig_roomowners", &["a@x", "b@x"]),
            ]),
            1000,
            50,
        )
        .unwrap();
        assert!(c.persistent && c.members_only && c.whois_anyone);
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.max_users, 20);
        let mut c2 = c.clone();
        assert!(apply_form(
            &mut c2,
            &form(&[("muc#roomconfig_maxusers", &["5000"])]),
            1000,
            50
        )
        .is_err());
        assert!(apply_form(
            &mut c2,
            &form(&[("muc#roomconfig_persistentroom", &["maybe"])]),
            1000,
            50
        )
        .is_err());
        apply_form(
            &mut c2,
            &form(&[("muc#roomconfig_passwordprotectedroom", &["0"])]),
            1000,
            50,
        )
        .unwrap();
        assert!(!c2.password_protected());
    }
}
