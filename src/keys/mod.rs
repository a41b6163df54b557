//! Virtual keys: the secret format ([`secret`]) and the key files that hold their digests and
//! settings ([`store`]). The data plane never sees this module's files directly; it reads keys from
//! the compiled [`crate::policy::Policy`].

pub mod lifecycle;
pub mod secret;
pub mod store;
