//! Compile errors of the SQL compiler.

/// A rule that does not compile. Every variant that points into the SQL text carries a 1-based
/// `line` and `column`; most carry a hint saying what to write instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SqlError {
    /// The text does not parse.
    #[error("{line}:{column}: syntax error: {message}{}", hint_text(hint))]
    Syntax {
        /// What was wrong.
        message: String,
        /// What to write instead, when known.
        hint: Option<String>,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
    },
    /// Valid SQL outside the rule dialect (JOIN, GROUP BY, sub-query, ...).
    #[error("{line}:{column}: {construct} is not supported in rule SQL (one SELECT ... FROM \"topic\" [WHERE ...], no joins, grouping or sub-queries)")]
    Unsupported {
        /// The construct, e.g. `JOIN`, `GROUP BY`, `sub-query`.
        construct: String,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
    },
    /// A function the dialect does not have.
    #[error("{line}:{column}: unknown function `{name}`{}", hint.as_ref().map(|h| format!("; did you mean `{h}`?")).unwrap_or_default())]
    UnknownFunction {
        /// The name as written.
        name: String,
        /// The nearest known function name.
        hint: Option<String>,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
    },
    /// A function called with too few or too many arguments.
    #[error("{line}:{column}: `{function}` takes {expected} argument(s), got {found}")]
    ArgumentCount {
        /// The function.
        function: String,
        /// What it takes, e.g. `1` or `2 or 3`.
        expected: String,
        /// How many were given.
        found: usize,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
    },
    /// A literal of the wrong type or value where the dialect needs a specific one.
    #[error("{line}:{column}: {message}")]
    LiteralType {
        /// What was expected and found.
        message: String,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
    },
    /// A malformed FROM topic filter.
    #[error("{line}:{column}: bad topic filter {filter:?}: {reason}")]
    BadTopicFilter {
        /// The filter as written.
        filter: String,
        /// Why it is malformed.
        reason: String,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
    },
    /// Nesting deeper than the compiler accepts.
    #[error("{line}:{column}: expression nested deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
    },
    /// A construct that does not fit the rule's data type or a limit of the dialect.
    #[error("{line}:{column}: {message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
    },
    /// The embedded runtime module is not what the compiler expects (a build problem, not a
    /// problem of the rule).
    #[error("internal error of the SQL compiler: {0}")]
    Internal(String),
}

fn hint_text(h: &Option<String>) -> String {
    h.as_ref()
        .map(|h| format!(" (hint: {h})"))
        .unwrap_or_default()
}

impl SqlError {
    /// The 1-based line and column the error points at, when it points into the text.
    pub fn position(&self) -> Option<(u32, u32)> {
        match self {
            SqlError::Syntax { line, column, .. }
            | SqlError::Unsupported { line, column, .. }
            | SqlError::UnknownFunction { line, column, .. }
            | SqlError::ArgumentCount { line, column, .. }
            | SqlError::LiteralType { line, column, .. }
            | SqlError::BadTopicFilter { line, column, .. }
            | SqlError::TooDeep { line, column, .. }
            | SqlError::Invalid { line, column, .. } => Some((*line, *column)),
            SqlError::Internal(_) => None,
        }
    }

    /// A short stable name of the error kind (for metrics labels and API error codes).
    pub fn kind(&self) -> &'static str {
        match self {
            SqlError::Syntax { .. } => "syntax",
            SqlError::Unsupported { .. } => "unsupported",
            SqlError::UnknownFunction { .. } => "unknown_function",
            SqlError::ArgumentCount { .. } => "argument_count",
            SqlError::LiteralType { .. } => "literal_type",
            SqlError::BadTopicFilter { .. } => "bad_topic_filter",
            SqlError::TooDeep { .. } => "too_deep",
            SqlError::Invalid { .. } => "invalid",
            SqlError::Internal(_) => "internal",
        }
    }
}
