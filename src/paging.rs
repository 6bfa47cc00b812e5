//! Paged lists, one way for all of them: a page size, and keyset cursors. A cursor is the key of the
//! last row of the previous page (a task id, an account id, a ledger entry id); the next page starts
//! strictly after it, so rows added meanwhile never shift a page.

use std::fmt::Display;

use crate::error::Error;

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

/// A page size: 1–100, 20 when not given.
pub fn limit(limit: Option<i64>) -> Result<i64, Error> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::Invalid(format!("`limit`: must be between 1 and {MAX_LIMIT}.")));
    }
    Ok(limit)
}

/// The cursor given as `parameter`, read by `parse`; one that `parse` refuses is invalid.
pub fn cursor<'a, T>(
    parameter: &str,
    given: Option<&'a str>,
    parse: impl FnOnce(&'a str) -> Option<T>,
) -> Result<Option<T>, Error> {
    let invalid = || Error::Invalid(format!("`{parameter}`: not a cursor from a previous page."));
    given.map(|text| parse(text).ok_or_else(invalid)).transpose()
}

/// The cursor of the page after `rows`: the key of its last row when the page is full, `None` when
/// it is the last page.
pub fn next_cursor<T>(rows: &[T], limit: i64, key: impl FnOnce(&T) -> &dyn Display) -> Option<String> {
    rows.last().filter(|_| rows.len() as i64 == limit).map(|row| key(row).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_one_to_a_hundred() {
        assert_eq!(limit(None).ok(), Some(20));
        assert_eq!(limit(Some(100)).ok(), Some(100));
        assert!(limit(Some(0)).is_err() && limit(Some(101)).is_err());
    }

    #[test]
    fn a_full_page_has_a_next_cursor() {
        assert_eq!(next_cursor(&[1, 2], 2, |n| n), Some("2".to_owned()));
        assert_eq!(next_cursor(&[1], 2, |n| n), None);
        assert_eq!(next_cursor::<i64>(&[], 2, |n| n), None);
        let parsed = cursor("cursor", Some("7"), |c| c.parse::<i64>().ok());
        assert_eq!(parsed.ok().flatten(), Some(7));
        let refused = cursor("cursor", Some("x"), |c| c.parse::<i64>().ok());
        assert!(refused.is_err_and(|e| e.to_string().contains("`cursor`")));
    }
}
