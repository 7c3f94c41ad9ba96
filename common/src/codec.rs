//! The gRPC codec of every Cairn service: prost's, except that the encoder reserves a
//! message's whole length before writing it. Prost writes into tonic's buffer as it goes, so
//! a message carrying a multi-MiB object or shard would otherwise grow that buffer by
//! doubling, copying everything written so far at each step (a tenth of an OSD's CPU during
//! recovery went to those copies).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::EncodeBuf;
use tonic::Status;
use tonic_prost::ProstDecoder;

/// Encodes `T` and decodes `U` with prost; named by the generated code (see `build.rs`).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = Encoder<T>;
    // Prost's: `bytes` fields generated as `Bytes` (see `build.rs`) take their slice of the
    // received buffer without a copy.
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Encoder<T> {
        Encoder(PhantomData)
    }

    fn decoder(&mut self) -> ProstDecoder<U> {
        ProstDecoder::default()
    }
}

/// Prost's encoding into a buffer sized for the whole message first.
#[derive(Debug, Clone)]
pub struct Encoder<T>(PhantomData<T>);

impl<T: Message> tonic::codec::Encoder for Encoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode a message: {e}")))
    }
}
