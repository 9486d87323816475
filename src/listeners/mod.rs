//! Where mail comes in: the SMTP and LMTP listeners (the pipe transport is `deliver`).

pub mod imap;
pub mod smtp;
