//! A guide to krcu: the choices an application makes and how to read what
//! krcu tells it. Documentation only: this module has no items. Its code
//! blocks are doc tests, run with the crate's tests.
//!
//! The sections, each in its own file next to this one: choosing a policy
//! (`policy.md`), real-time threads (`realtime.md`), memory bounds and the
//! flood brake (`memory.md`), what each statistic means (`stats.md`), and
//! reading a validator report (`report.md`).
#![doc = include_str!("policy.md")]
#![doc = include_str!("realtime.md")]
#![doc = include_str!("memory.md")]
#![doc = include_str!("stats.md")]
#![doc = include_str!("report.md")]
