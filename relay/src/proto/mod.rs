//! Sans-IO codecs of the data plane (RTSP and its Range header, SDP, RTP, interleaved framing, ROP media frames):
//! bytes in, a typed value or a precise error out. No sockets, no clocks, no runtime.
#![forbid(unsafe_code)]

pub mod aac;
#[doc(hidden)]
pub mod fuzz_rtsp;
pub mod h264;
pub mod h265;
pub mod interleaved;
pub mod media;
pub mod nal;
pub mod range;
pub mod rtp;
pub mod rtsp;
pub mod sdp;
