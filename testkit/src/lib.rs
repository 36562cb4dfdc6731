#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![allow(clippy::missing_errors_doc)]

pub mod conformance;
pub mod counting;
pub mod failing;
pub mod fuzzing;
pub mod limits;
pub mod netstore;
mod out_of_process;
mod verify_ext;
pub mod write_ext;

pub use counting::CountingStore;
pub use out_of_process::OutOfProcess;
pub use verify_ext::VerifyExt;
pub use write_ext::WriteExt;
