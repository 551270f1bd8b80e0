//! One process-wide instance: `krcu::rcu::*`, `krcu::kfree_rcu()` and
//! friends, and `Krcu::global()` share one domain and one `Rcu`, so a reader
//! entered through any of them holds off a retire made through any other.
//! And guards protect only their own instance: what a reader of one
//! instance does not hold off on another, and what the validator says.

use krcu::Krcu;
use krcu::lockdep::{ReportHandler, ReportKind, ReportLog};
use krcu::rcu::{self, HasRcuHead, RcuHead, ReadGuard};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc;
use std::time::Duration;

/// An object that records that it was dropped.
struct Tracked {
    dropped: Arc<AtomicBool>,
    rcu: RcuHead,
}

// SAFETY: `rcu` is an RcuHead field of Tracked.
unsafe impl HasRcuHead for Tracked {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Tracked, rcu);
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.dropped.store(true, SeqCst);
    }
}

fn tracked() -> (Box<Tracked>, Arc<AtomicBool>) {
    let dropped = Arc::new(AtomicBool::new(false));
    (
        Box::new(Tracked {
            dropped: dropped.clone(),
            rcu: RcuHead::new(),
        }),
        dropped,
    )
}

/// How long the reader stays inside watching for a wrong early free. Not a
/// timing assertion: a correct implementation passes however long this is,
/// a wrong one fails unless the machine is slower than this.
const WATCH: Duration = Duration::from_millis(1500);
/// Watchdog for a wait that must end once the reader has left.
const WATCHDOG: Duration = Duration::from_secs(60);

/// The calling thread enters a read-side section with `enter`; another
/// thread retires an object with `retire` and then waits with `wait`. While
/// the reader is inside, the object must stay and the wait must not end;
/// once it leaves, the wait ends and the object is gone.
fn reader_holds_off(
    what: &str,
    enter: impl FnOnce() -> ReadGuard<'static>,
    retire: impl FnOnce(Box<Tracked>) + Send + 'static,
    wait: impl FnOnce() + Send + 'static,
) {
    let (obj, dropped) = tracked();
    let guard = enter();
    let (tx, rx) = mpsc::channel();
    let writer = std::thread::spawn(move || {
        retire(obj);
        wait();
        let _ = tx.send(());
    });
    let early = rx.recv_timeout(WATCH);
    assert!(
        !dropped.load(SeqCst),
        "{what}: the object was freed while a reader of the same domain was inside"
    );
    assert!(
        early.is_err(),
        "{what}: the wait returned while a reader of the same domain was inside"
    );
    drop(guard);
    rx.recv_timeout(WATCHDOG)
        .unwrap_or_else(|_| panic!("{what}: the wait did not end after the reader left"));
    writer.join().unwrap();
    assert!(dropped.load(SeqCst), "{what}: the object was never freed");
}

#[test]
fn one_process_wide_instance() {
    assert!(
        core::ptr::eq(Krcu::global().rcu(), rcu::global()),
        "Krcu::global().rcu() and krcu::rcu::global() are different instances"
    );
    assert!(Krcu::global().domain().same(krcu::Domain::global()));
    assert!(rcu::global().domain().same(krcu::Domain::global()));
    // A reader entered through one entry point is a reader of the other.
    let _g = rcu::read_lock();
    assert!(Krcu::global().rcu().is_reading());
}

#[test]
fn kfree_rcu_waits_for_rcu_read_lock_reader() {
    reader_holds_off(
        "rcu::read_lock + kfree_rcu + kvfree_rcu_barrier",
        || rcu::read_lock().into(),
        |obj| krcu::kfree_rcu(obj).unwrap(),
        krcu::kvfree_rcu_barrier,
    );
}

#[test]
fn kvfree_rcu_mightsleep_waits_for_rcu_read_lock_reader() {
    reader_holds_off(
        "rcu::read_lock + kvfree_rcu_mightsleep + kvfree_rcu_barrier",
        || rcu::read_lock().into(),
        |obj| krcu::kvfree_rcu_mightsleep(obj).unwrap(),
        krcu::kvfree_rcu_barrier,
    );
}

#[test]
fn call_rcu_waits_for_global_krcu_reader() {
    reader_holds_off(
        "Krcu::global().rcu().read_lock + rcu::call_rcu_box + rcu::rcu_barrier",
        || Krcu::global().rcu().read_lock(),
        rcu::call_rcu_box,
        rcu::rcu_barrier,
    );
}

#[test]
fn synchronize_waits_across_entry_points() {
    reader_holds_off(
        "rcu::read_lock + Krcu::global().rcu().synchronize",
        || rcu::read_lock().into(),
        |obj| {
            Krcu::global().rcu().synchronize();
            drop(obj);
        },
        || {},
    );
    reader_holds_off(
        "Krcu::global().rcu().read_lock + rcu::synchronize",
        || Krcu::global().rcu().read_lock(),
        |obj| {
            rcu::synchronize();
            drop(obj);
        },
        || {},
    );
}

/// A reader of the process-wide instance does not protect an object retired
/// on another instance: the other instance's barrier returns with the
/// reader still inside and the object freed. In builds with the validator,
/// the retire is reported as suspicious RCU usage.
#[test]
fn guards_protect_only_their_own_instance() {
    let log = ReportLog::new();
    let other = Krcu::builder()
        .arena_size(16 << 20)
        .cpus(2)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build()
        .unwrap();
    let (obj, dropped) = tracked();
    {
        let _foreign = rcu::read_lock();
        other.kfree_rcu(obj).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                other.kvfree_rcu_barrier();
                let _ = tx.send(());
            });
            rx.recv_timeout(WATCHDOG)
                .expect("another instance's barrier waited for a reader of the global instance");
        });
        assert!(dropped.load(SeqCst));
    }
    let expected = usize::from(krcu::lockdep::COMPILED);
    assert_eq!(
        log.count(ReportKind::SuspiciousRcuUsage),
        expected,
        "{:#?}",
        log.reports()
    );
    if krcu::lockdep::COMPILED {
        let r = &log.reports()[0];
        assert!(r.text.contains("another RCU instance"), "{}", r.text);
        assert!(r.at.contains("tests/domain.rs"), "{}", r.at);
    }

    // Retiring inside a reader of the retiring instance itself (the usual
    // pattern), or of both, is not reported.
    log.take();
    {
        let _own = other.rcu().read_lock();
        let (obj, _) = tracked();
        other.kfree_rcu(obj).unwrap();
        let _foreign = rcu::read_lock();
        let (obj, _) = tracked();
        other.kfree_rcu(obj).unwrap();
    }
    other.kvfree_rcu_barrier();
    let suspicious = log.count(ReportKind::SuspiciousRcuUsage);
    assert_eq!(suspicious, 0, "{:#?}", log.reports());
}
