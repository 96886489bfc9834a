//! Trace flags: the bits a span inherits from its parent and `traceparent` carries.

/// Flag bit: the span is force-sampled (Stardust TraceFlag, W3C sampled).
pub(crate) const FLAG_SAMPLED: u8 = 0x01;
/// Flag bit: the W3C "random trace id" flag, carried over from a peer.
pub(crate) const FLAG_RANDOM: u8 = 0x02;
/// The flag bits a child inherits and `traceparent` carries.
pub(crate) const FLAGS_PROPAGATED: u8 = FLAG_SAMPLED | FLAG_RANDOM;
