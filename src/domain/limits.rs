//! The documented limits on every field and list. README.md lists the same numbers.

/// Longest tenant name.
pub const TENANT_MAX: usize = 63;
/// Longest module name or pattern.
pub const MODULE_MAX: usize = 128;
/// Longest scope label.
pub const LABEL_MAX: usize = 64;
/// Longest scope id (stored ids are `scp_` and 20 characters).
pub const SCOPE_ID_MAX: usize = 64;
/// Longest description, in bytes.
pub const DESCRIPTION_MAX: usize = 1024;
/// Longest owner, in bytes.
pub const OWNER_MAX: usize = 256;
/// Most metadata entries on a key.
pub const METADATA_ENTRIES_MAX: usize = 32;
/// Longest metadata key.
pub const METADATA_KEY_MAX: usize = 64;
/// Longest metadata value, in bytes.
pub const METADATA_VALUE_MAX: usize = 512;
/// Most scopes on one key.
pub const SCOPES_PER_KEY_MAX: usize = 32;
/// Most patterns under one action of a scope.
pub const PATTERNS_PER_RULE_MAX: usize = 64;
/// Most stored scope ids in one EvaluateScopes request.
pub const EVALUATE_SCOPE_IDS_MAX: usize = 32;
/// Most inline scopes in one EvaluateScopes request.
pub const EVALUATE_INLINE_MAX: usize = 16;
/// Most items in one BatchCheck.
pub const BATCH_ITEMS_MAX: usize = 128;
/// Longest credential accepted before it is even parsed.
pub const TOKEN_MAX: usize = 256;
/// Page size when a list request gives none.
pub const PAGE_SIZE_DEFAULT: usize = 50;
/// Largest page; larger requests are served this many.
pub const PAGE_SIZE_MAX: usize = 500;
/// Longest page token.
pub const PAGE_TOKEN_MAX: usize = 128;
/// Largest gRPC request message, in bytes.
pub const MESSAGE_MAX_BYTES: usize = 256 * 1024;
/// Most source networks on one key.
pub const CIDRS_PER_KEY_MAX: usize = 32;
/// Largest rate (requests per second) and burst of a key's rate limit.
pub const RATE_LIMIT_MAX: u32 = 1_000_000;
/// Longest grace period of a rotation: 30 days.
pub const ROTATION_GRACE_MAX_SECS: u64 = 30 * 24 * 3600;
/// Longest principal subject, in bytes.
pub const SUBJECT_MAX: usize = 256;
/// Longest role name.
pub const ROLE_MAX: usize = 64;
/// Most roles of one principal (and in one bearer-principal credential).
pub const ROLES_PER_PRINCIPAL_MAX: usize = 32;
/// Most subjects one scope is bound to.
pub const MEMBER_SUBJECTS_MAX: usize = 1000;
/// Most roles one scope is bound to.
pub const MEMBER_ROLES_MAX: usize = 100;
/// Longest page token of ListPrincipals (its cursor is a subject of up to 256 bytes).
pub const PRINCIPAL_PAGE_TOKEN_MAX: usize = 512;
