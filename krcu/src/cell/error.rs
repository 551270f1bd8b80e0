//! Why an update of an [`RcuCell`](super::RcuCell)(super::RcuCell) was refused
//! ([`UpdateError`]) or did not swap ([`CompareExchangeError`]), and the
//! context checks that refuse it. Uses only the thread's context.

use crate::context;

/// An update of an [`RcuCell`](super::RcuCell) was refused before the swap: the cell was
/// left untouched, no value readers may still reach was dropped, and the
/// new value (a `T` or an [`RcuBox`](super::RcuBox)) is handed back.
///
/// - `InNmi`: in NMI context, where `kfree_rcu` refuses (as the kernel
///   does), no update can retire the old value.
/// - `Realtime` and `InHardirq`: the update would allocate (it boxes the
///   value) on a real-time thread ([`Krcu::register_thread`](crate::Krcu::register_thread),
///   [`context::set_realtime`]) or in a hardirq handler (a signal handler,
///   where `malloc` is not async-signal-safe). Box the value beforehand
///   with [`RcuBox::new`](super::RcuBox::new) and publish it with the `_box` form
///   ([`RcuCell::store_box`](super::RcuCell::store_box)), which does not allocate.
#[derive(thiserror::Error)]
#[must_use = "the refused new value is handed back; the cell still holds its old value"]
pub enum UpdateError<V> {
    /// Called from NMI context.
    #[error("RcuCell update in NMI context: refused before the swap, the new value is handed back")]
    InNmi(V),
    /// Called on a real-time thread, where the update would allocate.
    #[error(
        "RcuCell update on a real-time thread would allocate: refused, the new value is \
         handed back (publish an RcuBox prepared beforehand with store_box)"
    )]
    Realtime(V),
    /// Called in hardirq context (a signal handler), where the update would
    /// allocate.
    #[error(
        "RcuCell update in hardirq (signal-handler) context would allocate: refused, the \
         new value is handed back (publish an RcuBox prepared beforehand with store_box)"
    )]
    InHardirq(V),
}

impl<V> UpdateError<V> {
    /// The new value, handed back.
    pub fn into_inner(self) -> V {
        match self {
            Self::InNmi(v) | Self::Realtime(v) | Self::InHardirq(v) => v,
        }
    }
}

impl<V> core::fmt::Debug for UpdateError<V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::InNmi(_) => "InNmi(..)",
            Self::Realtime(_) => "Realtime(..)",
            Self::InHardirq(_) => "InHardirq(..)",
        })
    }
}

/// Refuses an update in NMI context (handing `v` back).
#[inline]
pub(super) fn refuse_nmi<V>(v: V) -> Result<V, UpdateError<V>> {
    if context::in_nmi() {
        Err(UpdateError::InNmi(v))
    } else {
        Ok(v)
    }
}

/// Refuses an update that would allocate where it must not: NMI, a
/// real-time thread, hardirq (handing `v` back).
#[inline]
pub(super) fn refuse_alloc<V>(v: V) -> Result<V, UpdateError<V>> {
    let v = refuse_nmi(v)?;
    if context::is_realtime() {
        Err(UpdateError::Realtime(v))
    } else if context::in_hardirq() {
        Err(UpdateError::InHardirq(v))
    } else {
        Ok(v)
    }
}

/// Why [`RcuCell::compare_exchange`](super::RcuCell::compare_exchange) did not swap. `V` is what was offered:
/// a `T`, or an [`RcuBox`](super::RcuBox) for [`RcuCell::compare_exchange_box`](super::RcuCell::compare_exchange_box).
#[must_use = "the new value is handed back"]
pub enum CompareExchangeError<'g, T, V = T> {
    /// The cell did not hold `current`: `current` is what it held, `new`
    /// the value handed back.
    Changed {
        /// What the cell held when compared, readable under the guard.
        current: Option<&'g T>,
        /// The new value, handed back.
        new: V,
    },
    /// Refused before comparing (see [`UpdateError`]); the new value is
    /// handed back.
    Refused(UpdateError<V>),
}

impl<T, V> core::fmt::Display for CompareExchangeError<'_, T, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Changed { .. } => f.write_str(
                "RcuCell compare_exchange: the cell held another value; the new value is handed back",
            ),
            Self::Refused(e) => core::fmt::Display::fmt(e, f),
        }
    }
}

impl<T, V> std::error::Error for CompareExchangeError<'_, T, V> {}

impl<T, V> core::fmt::Debug for CompareExchangeError<'_, T, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Changed { current, .. } => f
                .debug_struct("Changed")
                .field("current_is_some", &current.is_some())
                .finish_non_exhaustive(),
            Self::Refused(e) => f.debug_tuple("Refused").field(e).finish(),
        }
    }
}
