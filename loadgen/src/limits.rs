//! Process limits the loadgen needs before it opens thousands of sockets.

/// Makes sure at least `needed` descriptors may be open, raising the soft RLIMIT_NOFILE up to the
/// hard limit if it is lower (a user may do that for themselves; only the hard limit needs
/// privileges). Returns an explanation when even the hard limit is too low.
pub fn ensure_open_files(needed: u64) -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit that lives across the call; getrlimit writes
    // only it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        ));
    }
    let current = limit.rlim_cur;
    if current >= needed {
        return Ok(());
    }
    let hard = limit.rlim_max;
    if hard < needed {
        return Err(format!(
            "{needed} open files needed but the hard limit is {hard}: \
             raise it (ulimit -Hn) or use fewer --clients"
        ));
    }
    limit.rlim_cur = needed;
    // SAFETY: `limit` is a valid rlimit read just above with only the soft value raised, still
    // within the hard one; setrlimit reads it and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(format!(
            "setrlimit(RLIMIT_NOFILE, {needed}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_need_is_already_met() {
        assert!(ensure_open_files(16).is_ok());
    }

    #[test]
    fn an_impossible_need_is_explained() {
        let err = ensure_open_files(u64::MAX / 2).unwrap_err();
        assert!(err.contains("hard limit"), "{err}");
    }
}
