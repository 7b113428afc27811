//! Input checks shared by the ledger and the gateway: every id, text, amount and time window
//! is bounded (see [`crate::limits`]) before it can touch the state.

use crate::error::{Code, Rejection, reject};
use crate::limits;

/// Ids are 1..=64 bytes of `[A-Za-z0-9_.:@-]`: safe in URLs, keys and logs.
pub fn check_id(field: &str, id: &str) -> Result<(), Rejection> {
    let ok = !id.is_empty()
        && id.len() <= limits::ID_BYTES_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        reject(
            Code::InvalidInput,
            format!("{field} must be 1 to {} characters of A-Z a-z 0-9 _ . : @ -", limits::ID_BYTES_MAX),
        )
    }
}

pub fn check_text(field: &str, text: &str, min: usize, max: usize) -> Result<(), Rejection> {
    if text.len() < min || text.len() > max {
        return reject(Code::InvalidInput, format!("{field} must be {min} to {max} bytes"));
    }
    Ok(())
}

pub fn check_amount(field: &str, amount: i64, min: i64) -> Result<(), Rejection> {
    if amount < min || amount > limits::AMOUNT_MAX {
        return reject(Code::InvalidAmount, format!("{field} must be between {min} and {}", limits::AMOUNT_MAX));
    }
    Ok(())
}

pub fn check_window(starts_at_ms: i64, ends_at_ms: i64) -> Result<(), Rejection> {
    if starts_at_ms < 0 || ends_at_ms > limits::TIME_MS_MAX || starts_at_ms >= ends_at_ms {
        return reject(Code::InvalidTime, "starts_at must come before ends_at, both within years 1970..9999");
    }
    Ok(())
}

pub fn check_secs(field: &str, secs: u32) -> Result<(), Rejection> {
    if secs > limits::WINDOW_SECS_MAX {
        return reject(Code::InvalidInput, format!("{field} must be at most {}", limits::WINDOW_SECS_MAX));
    }
    Ok(())
}
