//! The command-line grammar.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// keyscope: an authorization service for API keys.
#[derive(Debug, Parser)]
#[command(name = "keyscope", version, about)]
pub struct Cli {
    /// keyscope gRPC address for client commands.
    #[arg(long, global = true, env = "KEYSCOPE_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Admin token for admin commands (and the credential `check` uses by default).
    #[arg(long, global = true, env = "KEYSCOPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
    /// TLS for an `https://` server.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How client commands reach an `https://` server.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// CA certificates (PEM) that sign the server's certificate (default: the system's).
    #[arg(long, global = true, env = "KEYSCOPE_TLS_CA_FILE", value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for a server that asks for one (mutual TLS).
    #[arg(long, global = true, env = "KEYSCOPE_TLS_CERT_FILE", value_name = "FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "KEYSCOPE_TLS_KEY_FILE", value_name = "FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the keyscope server.
    Serve {
        /// YAML config file (defaults, then this file, then KEYSCOPE__SECTION__KEY variables).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Only check the settings (and read the TLS files they name), then exit: 0 and
        /// `config: ok`, or 1 and the error.
        #[arg(long)]
        check_config: bool,
    },
    /// Make tokens offline.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Administer keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Administer scopes.
    #[command(subcommand)]
    Scope(ScopeCommand),
    /// Check whether a credential may perform ACTION on MODULE.
    Check(CheckArgs),
    /// Read the audit log of admin changes, newest first.
    Audit(AuditArgs),
    /// Administer principals (the owners of keys, and bearer callers).
    #[command(subcommand)]
    Principal(super::principals::PrincipalCommand),
    /// Administer tenant settings.
    #[command(subcommand)]
    Tenant(TenantCommand),
}

/// `keyscope tenant ...`
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// A tenant's key policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

/// `keyscope tenant policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show the tenant's key policy (the configured default when none is stored).
    Get {
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Set the tenant's maximum key lifetime; existing keys keep their expiry.
    Set {
        #[command(flatten)]
        tenant: TenantArg,
        /// Longest a key may live, e.g. `90d`.
        #[arg(long, value_name = "DURATION", required_unless_present = "no_max_key_lifetime")]
        max_key_lifetime: Option<String>,
        /// Remove the maximum: keys may live for ever.
        #[arg(long, conflicts_with = "max_key_lifetime")]
        no_max_key_lifetime: bool,
        /// Only if the policy is still at this version (0: any).
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
}

/// Source networks and rate limit, as typed.
#[derive(Debug, Args, Clone, Default)]
pub struct KeyPolicyArgs {
    /// Allowed source CIDR or address (repeat or comma-separate).
    #[arg(long = "allow-cidr", value_name = "CIDR", value_delimiter = ',')]
    pub allowed_cidrs: Vec<String>,
    /// Rate limit in requests per second (with --burst).
    #[arg(long, value_name = "PER_SECOND", requires = "burst")]
    pub rate: Option<f64>,
    /// Rate limit burst (with --rate).
    #[arg(long, requires = "rate")]
    pub burst: Option<u32>,
}

/// `keyscope audit ...`
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub tenant: TenantArg,
    /// Only changes to this key id, scope id, principal subject or tenant.
    #[arg(long, value_name = "ID")]
    pub target: Option<String>,
    /// Only changes to this kind of target.
    #[arg(long, value_name = "KIND", value_parser = crate::domain::AuditTarget::KINDS)]
    pub target_type: Option<String>,
    /// Only changes made by this admin key id (`keyscope`: made by keyscope itself).
    #[arg(long, value_name = "KEY_ID")]
    pub actor: Option<String>,
    /// Only changes at or after TIME: RFC 3339, or a duration ago (e.g. `1h`, `7d`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only changes at or before TIME: RFC 3339, or a duration ago.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Most events to print (pages are followed up to this many).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub limit: u32,
}

/// `keyscope token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh valid token (e.g. for bootstrap.admin_token in a Kubernetes Secret).
    New {
        /// Token prefix (security.token_prefix).
        #[arg(long, default_value = "ks")]
        prefix: String,
    },
}

/// Which tenant an admin command acts in.
#[derive(Debug, Args, Clone, Default)]
pub struct TenantArg {
    /// Tenant to act in (default: the admin key's own; only `system` keys may name another).
    #[arg(long, default_value = "")]
    pub tenant: String,
}

/// Paging of a list command.
#[derive(Debug, Args, Clone, Default)]
pub struct PageArgs {
    /// Items per page (max 500).
    #[arg(long, default_value_t = 0)]
    pub page_size: i32,
    /// Resume from a previous page.
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Fetch every page.
    #[arg(long)]
    pub all: bool,
}

/// Key state, as typed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    /// Active keys.
    Active,
    /// Disabled keys.
    Disabled,
    /// Revoked keys.
    Revoked,
}

/// Expiry, as typed.
#[derive(Debug, Args, Clone, Default)]
pub struct ExpiryArgs {
    /// Expiry instant, RFC 3339 (e.g. 2027-01-31T00:00:00Z).
    #[arg(long, value_name = "RFC3339", conflicts_with = "expires_in")]
    pub expires_at: Option<String>,
    /// Expiry from now, e.g. `90d`, `12h`.
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,
}

/// `keyscope key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; its token is printed once.
    Create {
        #[command(flatten)]
        tenant: TenantArg,
        /// Scope ids the key holds (repeat or comma-separate).
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Owner (user id, e-mail, service).
        #[arg(long, default_value = "")]
        owner: String,
        #[command(flatten)]
        expiry: ExpiryArgs,
        /// Metadata entry KEY=VALUE (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        #[command(flatten)]
        policy: KeyPolicyArgs,
    },
    /// Show one key.
    Get {
        /// Key id.
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// List keys.
    List {
        #[command(flatten)]
        tenant: TenantArg,
        /// Only keys of this owner.
        #[arg(long)]
        owner: Option<String>,
        /// Only keys holding this scope.
        #[arg(long)]
        scope: Option<String>,
        /// Only keys in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only keys not used since DATE (`YYYY-MM-DD`, UTC midnight, or RFC 3339), or never.
        #[arg(long, value_name = "DATE")]
        unused_since: Option<String>,
        #[command(flatten)]
        page: PageArgs,
        /// Only keys that outlive DURATION from now (no expiry, or a later one): the keys a
        /// maximum key lifetime of DURATION would refuse. Reads every page (filtered here).
        #[arg(long, value_name = "DURATION", conflicts_with = "page_token")]
        outliving: Option<String>,
    },
    /// Show a key's daily counts of allowed and denied checks, and its last use.
    Usage {
        /// Key id.
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// First day, `YYYY-MM-DD` UTC (default: 29 days before the end).
        #[arg(long, value_name = "DATE", default_value = "")]
        start: String,
        /// Last day, `YYYY-MM-DD` UTC (default: today).
        #[arg(long, value_name = "DATE", default_value = "")]
        end: String,
    },
    /// Change a key's description, owner, scopes, expiry or metadata.
    Update {
        /// Key id.
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// The version the change is based on (from `key get`).
        #[arg(long)]
        version: u64,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// New owner.
        #[arg(long)]
        owner: Option<String>,
        /// New scopes (replace all; repeat or comma-separate).
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
        #[command(flatten)]
        expiry: ExpiryArgs,
        /// Remove the expiry.
        #[arg(long, conflicts_with_all = ["expires_at", "expires_in"])]
        no_expiry: bool,
        /// New metadata (replaces all; repeatable KEY=VALUE).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// Remove all metadata.
        #[arg(long, conflicts_with = "metadata")]
        clear_metadata: bool,
        #[command(flatten)]
        policy: KeyPolicyArgs,
        /// Remove the source networks: any source again.
        #[arg(long, conflicts_with = "allowed_cidrs")]
        clear_cidrs: bool,
        /// Remove the rate limit.
        #[arg(long, conflicts_with = "rate")]
        no_rate_limit: bool,
    },
    /// Disable a key (reversible).
    Disable(KeyStateArgs),
    /// Enable a disabled key.
    Enable(KeyStateArgs),
    /// Revoke a key for good.
    Revoke(KeyStateArgs),
    /// Issue a new secret for a key; the new token is printed once.
    Rotate {
        /// Key id.
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// How long the old secret stays valid, e.g. `1h` (default 0: it dies at once; at most 30d).
        #[arg(long, value_name = "DURATION", default_value = "0s")]
        grace: String,
        /// Only if the key is still at this version (0: any).
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
}

/// Arguments of disable, enable and revoke.
#[derive(Debug, Args)]
pub struct KeyStateArgs {
    /// Key id.
    pub id: String,
    #[command(flatten)]
    pub tenant: TenantArg,
    /// Only if the key is still at this version.
    #[arg(long, default_value_t = 0)]
    pub version: u64,
}

/// Scope mode, as typed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Grants what the rules list.
    Allow,
    /// Denies what the rules list, grants the rest.
    Deny,
}

/// Rules, as typed: patterns per action.
#[derive(Debug, Args, Clone, Default)]
pub struct RuleArgs {
    /// Patterns for create (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub create: Vec<String>,
    /// Patterns for read.
    #[arg(long, value_delimiter = ',')]
    pub read: Vec<String>,
    /// Patterns for update.
    #[arg(long, value_delimiter = ',')]
    pub update: Vec<String>,
    /// Patterns for delete.
    #[arg(long, value_delimiter = ',')]
    pub delete: Vec<String>,
}

impl RuleArgs {
    /// Whether any rule flag was given.
    pub fn any(&self) -> bool {
        !(self.create.is_empty() && self.read.is_empty() && self.update.is_empty() && self.delete.is_empty())
    }
}

/// `keyscope scope ...`
#[derive(Debug, Subcommand)]
pub enum ScopeCommand {
    /// Create a scope.
    Create {
        #[command(flatten)]
        tenant: TenantArg,
        /// Label, unique per tenant.
        #[arg(long)]
        label: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Allow or deny mode.
        #[arg(long, value_enum, default_value = "allow")]
        mode: ModeArg,
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Show one scope.
    Get {
        /// Scope id.
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// List scopes, builtins included.
    List {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Change a scope; rule flags replace all rules.
    Update {
        /// Scope id.
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// The version the change is based on (from `scope get`).
        #[arg(long)]
        version: u64,
        /// New label.
        #[arg(long)]
        label: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// New mode.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        #[command(flatten)]
        rules: RuleArgs,
        /// Remove every rule.
        #[arg(long)]
        clear_rules: bool,
    },
    /// Delete a scope.
    Delete {
        /// Scope id.
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// Also remove it from the keys that hold it.
        #[arg(long)]
        force: bool,
        /// Only if the scope is still at this version.
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
    /// Copy a scope under a new label.
    Clone {
        /// Scope id to copy.
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// Label of the copy.
        #[arg(long)]
        label: String,
        /// Description of the copy (default: the source's).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Evaluate stored scopes and/or an inline scope for MODULE and ACTION, with no key.
    Eval {
        /// Module to check.
        module: String,
        /// Action: create, read, update or delete.
        action: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// Stored scope ids (repeat or comma-separate).
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
        /// Mode of an inline scope made from the rule flags (named `inline`).
        #[arg(long, value_enum, default_value = "allow")]
        mode: ModeArg,
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Show or replace the subjects and roles a scope is bound to.
    #[command(subcommand)]
    Members(super::principals::MembersCommand),
}

/// `keyscope check ...`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Module to check.
    pub module: String,
    /// Action: create, read, update or delete.
    pub action: String,
    /// Require the key to be of this tenant.
    #[arg(long, default_value = "")]
    pub tenant: String,
    /// Token to check (default: --token / KEYSCOPE_TOKEN).
    #[arg(long, env = "KEYSCOPE_CHECK_CREDENTIAL", hide_env_values = true)]
    pub credential: Option<String>,
    /// Key id, with --secret, instead of a whole token.
    #[arg(long, requires = "secret", conflicts_with = "credential")]
    pub key_id: Option<String>,
    /// The token's last part, with --key-id.
    #[arg(long, requires = "key_id", env = "KEYSCOPE_CHECK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The source address to check from (IPv4 or IPv6; keys only).
    #[arg(long, value_name = "IP", default_value = "", conflicts_with = "subject")]
    pub source: String,
    /// Check a bearer principal with this subject instead of a key (needs --tenant).
    #[arg(long, conflicts_with_all = ["credential", "key_id"], requires = "tenant")]
    pub subject: Option<String>,
    /// The bearer principal's roles (repeat or comma-separate), with --subject.
    #[arg(long = "roles", value_delimiter = ',', requires = "subject")]
    pub roles: Vec<String>,
}
