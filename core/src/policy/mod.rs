//! The policy model: documents as users write them, their validation, and their compilation
//! into the indexed `data.json` the evaluator reads.

pub mod compile;
pub mod diagnostic;
pub mod model;
pub mod set;
pub mod source;
pub mod validate;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use model::PolicyDocument;
pub use set::{CompiledPolicies, PolicySet};
