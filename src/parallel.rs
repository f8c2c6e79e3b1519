//! Bounded parallelism for I/O-bound work (downloads, pulls, pushes): a few scoped threads
//! take items from a shared queue; the first error stops the rest and is returned.

use std::sync::Mutex;

/// Runs `f` on every item with at most `workers` threads; returns the first error.
pub fn try_for_each<T: Sync, E: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let queue = Mutex::new(items.iter());
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.min(items.len()) {
            s.spawn(|| {
                loop {
                    if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        break;
                    }
                    let Some(item) = queue.lock().ok().and_then(|mut q| q.next()) else {
                        break;
                    };
                    if let Err(e) = f(item)
                        && let Ok(mut slot) = first_error.lock()
                    {
                        slot.get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn visits_everything_or_stops_at_an_error() {
        let seen = std::sync::atomic::AtomicUsize::new(0);
        let items: Vec<usize> = (0..50).collect();
        super::try_for_each(&items, 4, |_| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(seen.into_inner(), 50);
        let r = super::try_for_each(&items, 4, |i| if *i == 7 { Err(*i) } else { Ok(()) });
        assert_eq!(r, Err(7));
    }
}
