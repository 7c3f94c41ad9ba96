//! What the object store can answer instead of data.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Stored data does not match its checksum: never returned as data.
    #[error("checksum mismatch in {collection}/{object} at bytes {offset}..{} (expected crc32c {expected:#010x}, found {found:#010x})", offset + length)]
    ChecksumMismatch {
        collection: String,
        object: String,
        offset: u64,
        length: u64,
        expected: u32,
        found: u32,
    },
    #[error("no space left: the transaction needs {needed} bytes, {available} bytes are free")]
    NoSpace { needed: u64, available: u64 },
    #[error("collection {0} does not exist")]
    NoCollection(String),
    #[error("collection {0} already exists")]
    CollectionExists(String),
    #[error("collection {0} is not empty")]
    CollectionNotEmpty(String),
    #[error("object {collection}/{object} does not exist")]
    NoObject { collection: String, object: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("I/O error on the data device: {0}")]
    Io(#[from] std::io::Error),
    #[error("metadata store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn no_object(collection: &str, object: &str) -> StoreError {
        StoreError::NoObject {
            collection: collection.to_string(),
            object: object.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;
