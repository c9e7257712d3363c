//! XEP-0398: User Avatar to vCard-Based Avatars Conversion, with XEP-0153 photo hashes in
//! presence and XEP-0084 avatar nodes.
//!
//! - **PEP → vCard** (§3.1): after a client publishes `urn:xmpp:avatar:metadata`, the image
//!   its first `<info/>` without a url names is looked up in `urn:xmpp:avatar:data`, its
//!   SHA-1 checked against the id, and stored as the vCard's PHOTO (TYPE + BINVAL). As §6
//!   asks, only when the data node's access model is `open`: Herald's vCards are readable
//!   by anyone, and a `presence`-only avatar copied there would leak. Empty metadata
//!   (avatar disabled, XEP-0084 §4.5) removes the PHOTO.
//! - **vCard → PEP** (§3.2): a vcard-temp set with a BINVAL PHOTO publishes the image to
//!   `:data` and one `<info/>` (id = SHA-1, bytes, type, width/height for PNG, GIF and
//!   JPEG) to `:metadata`, unless the metadata already names that image. New nodes are
//!   `open` (the vCard is public anyway); existing nodes keep their configuration.
//! - **Presence** (§4, XEP-0153): each available presence the user sends (broadcast or
//!   directed) carries `<x xmlns='vcard-temp:x:update'><photo>hash</photo></x>` with the
//!   SHA-1 of the vCard's photo. A client's `<photo/>` left empty (explicitly no avatar)
//!   is kept; an `<x/>` without photo or with another hash is replaced.
//!
//! The hash of each account's vCard photo is cached in memory (`PhotoHashes`, filled on the
//! first presence, kept current by every vCard write that passes through here), so
//! presence broadcast reads the store once per account and server run.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use dashmap::DashMap;
use herald_core::ns;
use herald_xml::Element;
use sha1::{Digest, Sha1};

use super::pep::{node_snapshot, write_as_owner};
use super::{vcard, IqRegistry};
use crate::Server;

/// Nodes the server creates from a vCard photo (the vCard is world-readable already).
const NODE_FROM_VCARD: &[(&str, &str)] = &[
    ("pubsub#access_model", "open"),
    ("pubsub#persist_items", "true"),
];

/// Accounts whose hash the cache keeps before it starts over (bounds memory).
const MAX_CACHED: usize = 100_000;

pub fn register(r: &mut IqRegistry) {
    r.account_features.push(ns::PEP_VCARD_CONVERSION);
}

/// Bare JID → hex SHA-1 of the vCard photo, `""` for a vCard without one.
#[derive(Default)]
pub struct PhotoHashes(DashMap<String, String>);

impl PhotoHashes {
    fn set(&self, owner: &str, hash: String) {
        if self.0.len() >= MAX_CACHED && !self.0.contains_key(owner) {
            self.0.clear();
        }
        self.0.insert(owner.to_string(), hash);
    }
}

fn sha1_hex(data: &[u8]) -> String {
    Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The PHOTO of a vCard: (TYPE, decoded BINVAL). EXTVAL photos have no bytes to hash.
fn vcard_photo(vcard: &Element) -> Option<(Option<String>, Vec<u8>)> {
    let photo = vcard.child("PHOTO", ns::VCARD)?;
    let bin = photo.child("BINVAL", ns::VCARD)?.text();
    let clean: String = bin.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = B64.decode(clean).ok().filter(|b| !b.is_empty())?;
    let kind = photo
        .child("TYPE", ns::VCARD)
        .map(|t| t.text().trim().to_string())
        .filter(|t| !t.is_empty());
    Some((kind, bytes))
}

fn photo_hash_of(vcard: Option<&Element>) -> String {
    vcard
        .and_then(vcard_photo)
        .map(|(_, b)| sha1_hex(&b))
        .unwrap_or_default()
}

/// The hash of `owner`'s vCard photo, if it has one.
async fn photo_hash(server: &Server, owner: &str) -> Option<String> {
    let cached = server.pep.avatar_hashes.0.get(owner).map(|h| h.clone());
    let hash = match cached {
        Some(h) => h,
        None => {
            let card = vcard::load(server, owner).await.ok()?;
            let h = photo_hash_of(card.as_ref());
            server.pep.avatar_hashes.set(owner, h.clone());
            h
        }
    };
    (!hash.is_empty()).then_some(hash)
}

/// XEP-0398 §4: an available presence `owner` sends gets the photo hash.
pub async fn outgoing_presence(server: &Server, owner: &str, el: &mut Element) {
    if el.attr("type").is_some() {
        return;
    }
    if let Some(photo) = el
        .child("x", ns::VCARD_UPDATE)
        .and_then(|x| x.child("photo", ns::VCARD_UPDATE))
    {
        if photo.text().trim().is_empty() {
            return;
        }
    }
    let Some(hash) = photo_hash(server, owner).await else {
        return;
    };
    let current = el
        .child("x", ns::VCARD_UPDATE)
        .and_then(|x| x.child("photo", ns::VCARD_UPDATE))
        .map(|p| p.text());
    if current.as_deref().map(str::trim) == Some(hash.as_str()) {
        return;
    }
    el.remove_children("x", ns::VCARD_UPDATE);
    el.push(
        Element::new("x", ns::VCARD_UPDATE)
            .with_child(Element::new("photo", ns::VCARD_UPDATE).with_text(hash)),
    );
}

/// Sniffs the media type of common image formats.
fn sniff_type(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if b.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// Width and height of a PNG, GIF or baseline/progressive JPEG.
fn dimensions(b: &[u8]) -> Option<(u32, u32)> {
    let be16 = |i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as u32);
    let be32 = |i: usize| Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?));
    match sniff_type(b)? {
        "image/png" if b.get(12..16) == Some(b"IHDR") => Some((be32(16)?, be32(20)?)),
        "image/gif" => {
            let le16 = |i: usize| Some(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?]) as u32);
            Some((le16(6)?, le16(8)?))
        }
        "image/jpeg" => {
            let mut i = 2;
            while i + 3 < b.len() {
                if b[i] != 0xff {
                    return None;
                }
                let marker = b[i + 1];
                if marker == 0xff {
                    i += 1;
                    continue;
                }
                let len = be16(i + 2)? as usize;
                let sof = (0xc0..=0xcf).contains(&marker) && !matches!(marker, 0xc4 | 0xc8 | 0xcc);
                if sof {
                    return Some((be16(i + 7)?, be16(i + 5)?));
                }
                i += 2 + len;
            }
            None
        }
        _ => None,
    }
}

/// XEP-0398 §3.2: a client stored `vcard` for `owner`.
pub async fn vcard_stored(server: &Arc<Server>, owner: &str, vcard: &Element) {
    let _guard = server.pep.conversion_lock(owner).await;
    let photo = vcard_photo(vcard);
    let hash = photo.as_ref().map(|(_, b)| sha1_hex(b)).unwrap_or_default();
    server.pep.avatar_hashes.set(owner, hash.clone());
    let Some((kind, bytes)) = photo else {
        return;
    };
    if current_metadata_id(server, owner).await.as_deref() == Some(hash.as_str()) {
        return;
    }
    let kind = kind
        .or_else(|| sniff_type(&bytes).map(str::to_string))
        .unwrap_or_else(|| "image/png".to_string());
    let data = Element::new("data", ns::AVATAR_DATA).with_text(B64.encode(&bytes));
    let mut info = Element::new("info", ns::AVATAR_METADATA)
        .with_attr("id", hash.as_str())
        .with_attr("bytes", bytes.len().to_string())
        .with_attr("type", kind);
    if let Some((w, h)) = dimensions(&bytes) {
        info.set_attr("width", w.to_string());
        info.set_attr("height", h.to_string());
    }
    let metadata = Element::new("metadata", ns::AVATAR_METADATA).with_child(info);
    // Data first: a client seeing the metadata can fetch the image at once.
    for (node, payload) in [(ns::AVATAR_DATA, data), (ns::AVATAR_METADATA, metadata)] {
        let item = vec![(hash.clone(), payload)];
        if let Err(e) = write_as_owner(server, owner, node, NODE_FROM_VCARD, item, vec![]).await {
            tracing::warn!(?e, owner, node, "avatar: vCard photo not published to PEP");
            return;
        }
    }
}

/// The newest metadata item's payload, if any.
async fn current_metadata(server: &Server, owner: &str) -> Option<Element> {
    node_snapshot(server, owner, ns::AVATAR_METADATA)
        .await
        .ok()
        .flatten()?
        .items
        .pop()
        .map(|(_, p)| p)
        .filter(|p| p.is("metadata", ns::AVATAR_METADATA))
}

/// The id of the image the metadata names (first `<info/>` without a url).
fn metadata_id(metadata: &Element) -> Option<(String, Option<String>)> {
    let info = metadata
        .elements()
        .filter(|i| i.is("info", ns::AVATAR_METADATA))
        .find(|i| i.attr("url").is_none())?;
    Some((
        info.attr("id")?.to_ascii_lowercase(),
        info.attr("type").map(str::to_string),
    ))
}

async fn current_metadata_id(server: &Server, owner: &str) -> Option<String> {
    metadata_id(&current_metadata(server, owner).await?).map(|(id, _)| id)
}

/// XEP-0398 §3.1: a client published to (or retracted from) one of `owner`'s nodes.
pub async fn pep_changed(server: &Arc<Server>, owner: &str, node: &str) {
    if node != ns::AVATAR_METADATA {
        return;
    }
    let _guard = server.pep.conversion_lock(owner).await;
    let Some(metadata) = current_metadata(server, owner).await else {
        return;
    };
    let card = match vcard::load(server, owner).await {
        Ok(c) => c,
        Err(_) => return,
    };
    let had = photo_hash_of(card.as_ref());
    let mut card = card.unwrap_or_else(|| Element::new("vCard", ns::VCARD));
    let has_info = metadata
        .elements()
        .any(|i| i.is("info", ns::AVATAR_METADATA));
    if !has_info {
        // XEP-0084 §4.5: publishing stopped.
        if card.remove_children("PHOTO", ns::VCARD) > 0 {
            store(server, owner, &card, String::new()).await;
        }
        return;
    }
    let Some((id, kind)) = metadata_id(&metadata) else {
        return;
    };
    if id == had {
        return;
    }
    let Ok(Some(data)) = node_snapshot(server, owner, ns::AVATAR_DATA).await else {
        return;
    };
    if data.access != "open" {
        tracing::debug!(
            owner,
            "avatar: data node not open; vCard left as it is (XEP-0398 §6)"
        );
        return;
    }
    let Some(b64) = data
        .items
        .iter()
        .find(|(i, _)| i.eq_ignore_ascii_case(&id))
        .map(|(_, p)| p.text())
    else {
        return;
    };
    let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let Ok(bytes) = B64.decode(clean.as_bytes()) else {
        return;
    };
    if sha1_hex(&bytes) != id {
        tracing::debug!(owner, "avatar: data does not match its id; not copied");
        return;
    }
    let kind = kind
        .or_else(|| sniff_type(&bytes).map(str::to_string))
        .unwrap_or_else(|| "image/png".to_string());
    card.remove_children("PHOTO", ns::VCARD);
    card.push(
        Element::new("PHOTO", ns::VCARD)
            .with_child(Element::new("TYPE", ns::VCARD).with_text(kind))
            .with_child(Element::new("BINVAL", ns::VCARD).with_text(clean)),
    );
    store(server, owner, &card, id).await;
}

async fn store(server: &Server, owner: &str, card: &Element, hash: String) {
    match vcard::store(server, owner, card).await {
        Ok(()) => server.pep.avatar_hashes.set(owner, hash),
        Err(e) => tracing::warn!(?e, owner, "avatar: vCard not updated"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_dimensions() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&[0, 0, 0, 64, 0, 0, 0, 32, 8, 6, 0, 0, 0]);
        assert_eq!(sniff_type(&png), Some("image/png"));
        assert_eq!(dimensions(&png), Some((64, 32)));
        let gif = b"GIF89a\x10\x00\x20\x00";
        assert_eq!(dimensions(gif), Some((16, 32)));
        let jpeg = [
            0xff, 0xd8, 0xff, 0xe0, 0, 4, 0, 0, 0xff, 0xc0, 0, 11, 8, 0, 48, 0, 96, 3,
        ];
        assert_eq!(dimensions(&jpeg), Some((96, 48)));
        assert_eq!(dimensions(b"nothing"), None);
    }
}
