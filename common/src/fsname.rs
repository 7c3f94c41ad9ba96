//! Names in the filesystem: directory entries and symlink targets. Linux allows any bytes in
//! them but `/` and NUL (a target may hold `/`), so they are bytes here, not `String`: a name
//! copied from an older system in Latin-1 must be creatable, listable and removable.
//!
//! In JSON (requests, replies, the MDS journal, inode records) a name that is valid UTF-8 is a
//! string, as every name was before names became bytes, so old journals and inode records
//! read back unchanged; any other name is `{"bytes": [..]}`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Any byte string. Ordered bytewise, which for UTF-8 is the order of the strings.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Vec<u8>);

impl Name {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// For messages and logs: invalid UTF-8 shows as U+FFFD.
    pub fn lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl From<Vec<u8>> for Name {
    fn from(bytes: Vec<u8>) -> Name {
        Name(bytes)
    }
}

impl From<&[u8]> for Name {
    fn from(bytes: &[u8]) -> Name {
        Name(bytes.to_vec())
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name(s.into_bytes())
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Name {
        Name(s.as_bytes().to_vec())
    }
}

impl From<&Name> for Name {
    fn from(name: &Name) -> Name {
        name.clone()
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name(s.as_bytes().to_vec())
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// Shown as a string literal, as `String` shows, with invalid bytes as `\xNN` (a backslash in
/// the name shows doubled, so two different names never look alike).
impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for chunk in self.0.utf8_chunks() {
            write!(f, "{}", chunk.valid().escape_debug())?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str("\"")
    }
}

/// Shown as text with invalid UTF-8 escaped as `\xNN`.
impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Bytes { bytes: Vec<u8> },
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => Repr::Bytes {
                bytes: self.0.clone(),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Text(text) => Name(text.into_bytes()),
            Repr::Bytes { bytes } => Name(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_names_keep_their_old_json() {
        let name = Name::from("héllo");
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"héllo\"");
        let back: Name = serde_json::from_str("\"héllo\"").unwrap();
        assert_eq!(back, name);
        assert_eq!(
            format!("{name:?}"),
            format!("{:?}", "héllo"),
            "shown as String is"
        );
    }

    #[test]
    fn other_bytes_travel_as_a_byte_list() {
        let name = Name::from(vec![b'a', 0xff, 0xfe]);
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, r#"{"bytes":[97,255,254]}"#);
        assert_eq!(serde_json::from_str::<Name>(&json).unwrap(), name);
        assert_eq!(name.to_string(), "a\\xff\\xfe");
        assert_eq!(format!("{name:?}"), "\"a\\xff\\xfe\"");
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let name = Name::from(bytes);
            let json = serde_json::to_vec(&name).unwrap();
            prop_assert_eq!(serde_json::from_slice::<Name>(&json).unwrap(), name);
        }

        #[test]
        fn order_is_that_of_the_strings(a in ".{0,8}", b in ".{0,8}") {
            prop_assert_eq!(Name::from(a.as_str()).cmp(&Name::from(b.as_str())), a.cmp(&b));
        }
    }
}
