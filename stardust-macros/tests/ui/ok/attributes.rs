//! Visibility, other attributes, `unsafe fn`, `extern "C" fn`, `mut` and pattern
//! parameters.
#![deny(warnings, missing_docs)]
#![allow(dead_code)]

use stardust_runtime::trace;

/// Documented, and the doc stays on the function.
#[trace]
#[must_use]
#[inline]
pub fn documented(x: u32) -> u32 {
    x
}

/// Inner attributes of the body stay inside it.
#[trace]
pub(crate) fn inner_attribute() -> u32 {
    #![allow(unused_variables)]
    let unused = 1;
    2
}

#[trace]
#[cold]
#[inline(never)]
#[allow(clippy::needless_return)]
fn cold() -> u32 {
    return 3;
}

/// Unsafe, with and without a Result.
///
/// # Safety
/// `p` must be valid.
#[trace]
pub unsafe fn read(p: *const u32) -> u32 {
    unsafe { *p }
}

/// # Safety
/// `p` must be valid.
#[trace]
pub unsafe fn read_checked(p: *const u32) -> Result<u32, String> {
    if p.is_null() {
        return Err("null".into());
    }
    Ok(unsafe { *p })
}

#[trace]
extern "C" fn callback(x: u32) -> u32 {
    x + 1
}

#[trace]
unsafe extern "C" fn unsafe_callback(p: *const u32) -> u32 {
    unsafe { *p }
}

#[trace(tag = "a={a} b={b} c={c} first={first}")]
fn patterns((a, b): (u32, u32), mut c: u32, [first, ..]: [u8; 3], _: ()) -> u32 {
    c += a + b + u32::from(first);
    c
}

struct Point {
    x: i32,
    y: i32,
}

#[trace(tag = "x={x} why={why}")]
fn destructure(Point { x, y: ref why }: Point, (whole @ _, _): (u8, u8)) -> i32 {
    x + *why + i32::from(whole)
}

fn main() {
    assert_eq!(documented(1), 1);
    assert_eq!(inner_attribute(), 2);
    assert_eq!(cold(), 3);
    let v = 7;
    assert_eq!(unsafe { read(&v) }, 7);
    assert_eq!(unsafe { read_checked(&v) }, Ok(7));
    assert!(unsafe { read_checked(std::ptr::null()) }.is_err());
    assert_eq!(callback(1), 2);
    assert_eq!(unsafe { unsafe_callback(&v) }, 7);
    assert_eq!(patterns((1, 2), 3, [4, 5, 6], ()), 10);
    assert_eq!(destructure(Point { x: 1, y: 2 }, (3, 0)), 6);
}
