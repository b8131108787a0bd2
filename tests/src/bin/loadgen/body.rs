//! Bodies: one serialised template, fields patched in place.

use anyhow::{ensure, Result};
use bytes::Bytes;
use dedupe_tests::Review;
use rand::Rng;
use serde_json::Value;

use crate::{NAME_LEN, UUID_LEN};

/// Byte ranges of each fixed-length field in the serialised template.
pub(crate) struct Template {
    bytes: Vec<u8>,
    delivery: Vec<usize>,
    name: Vec<usize>,
    request_uid: Vec<usize>,
    object_uid: Vec<usize>,
}

/// The values that make one request.
pub(crate) struct Fields<'a> {
    pub(crate) delivery: &'a [u8; UUID_LEN],
    pub(crate) name: &'a [u8; NAME_LEN],
    pub(crate) request_uid: &'a [u8; UUID_LEN],
    pub(crate) object_uid: &'a [u8; UUID_LEN],
}

pub(crate) fn offsets(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

pub(crate) fn random_uuid(rng: &mut impl Rng) -> [u8; UUID_LEN] {
    let uuid = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
    let mut out = [0u8; UUID_LEN];
    uuid.hyphenated().encode_lower(&mut out);
    out
}

pub(crate) fn run_name(n: u64) -> [u8; NAME_LEN] {
    let mut out = [0u8; NAME_LEN];
    let text = format!("lg-{n:016x}");
    out.copy_from_slice(text.as_bytes());
    out
}

impl Template {
    pub(crate) fn new() -> Result<Self> {
        let mut rng = rand::rng();
        // Random placeholders cannot collide with anything in the fixture.
        let delivery = random_uuid(&mut rng);
        let name = run_name(rng.random());
        let (delivery_s, name_s) = (std::str::from_utf8(&delivery)?, std::str::from_utf8(&name)?);
        let review = Review::create(delivery_s, name_s)?;
        let (request_uid, object_uid) = (review.request_uid(), review.object_uid());
        let bytes = serde_json::to_vec(review.json())?;
        let template = Self {
            delivery: offsets(&bytes, &delivery),
            name: offsets(&bytes, &name),
            request_uid: offsets(&bytes, request_uid.as_bytes()),
            object_uid: offsets(&bytes, object_uid.as_bytes()),
            bytes,
        };
        ensure!(
            template.delivery.len() >= 2
                && template.name.len() >= 2
                && template.request_uid.len() == 1
                && !template.object_uid.is_empty()
                && request_uid.len() == UUID_LEN
                && object_uid.len() == UUID_LEN,
            "the fixture does not have the expected delivery/name/uid fields"
        );
        template.self_check()?;
        Ok(template)
    }

    pub(crate) fn render(&self, fields: &Fields<'_>) -> Bytes {
        let mut out = self.bytes.clone();
        for &at in &self.delivery {
            out[at..at + UUID_LEN].copy_from_slice(fields.delivery);
        }
        for &at in &self.name {
            out[at..at + NAME_LEN].copy_from_slice(fields.name);
        }
        for &at in &self.request_uid {
            out[at..at + UUID_LEN].copy_from_slice(fields.request_uid);
        }
        for &at in &self.object_uid {
            out[at..at + UUID_LEN].copy_from_slice(fields.object_uid);
        }
        Bytes::from(out)
    }

    /// A patched body must equal the same review built through `Review`.
    fn self_check(&self) -> Result<()> {
        let mut rng = rand::rng();
        let (delivery, request_uid, object_uid) = (
            random_uuid(&mut rng),
            random_uuid(&mut rng),
            random_uuid(&mut rng),
        );
        let name = run_name(42);
        let body = self.render(&Fields {
            delivery: &delivery,
            name: &name,
            request_uid: &request_uid,
            object_uid: &object_uid,
        });
        let patched: Value = serde_json::from_slice(&body)?;
        let (request_uid, object_uid) = (
            std::str::from_utf8(&request_uid)?.to_owned(),
            std::str::from_utf8(&object_uid)?.to_owned(),
        );
        let expected =
            Review::create(std::str::from_utf8(&delivery)?, std::str::from_utf8(&name)?)?.edit(|v| {
                v["request"]["uid"] = request_uid.into();
                v["request"]["object"]["metadata"]["uid"] = object_uid.into();
            });
        ensure!(
            &patched == expected.json(),
            "patched template differs from the review built from the fixture"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_patches_to_the_fixture_review() -> Result<()> {
        Template::new().map(|_| ())
    }
}
