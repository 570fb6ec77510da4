/// One thing wrong with a config, at a field path such as
/// `applications[1].deployments[0].autoscaling_config.max_replicas` (DESIGN.md: errors "name the
/// field's path").
public struct ConfigProblem: Sendable, Hashable, CustomStringConvertible {
    /// Dotted keys and `[index]`es as the user wrote them (an alias stays an alias); empty for a
    /// problem with the whole document, such as a YAML syntax error.
    public var path: String
    public var message: String
    /// The deployment it concerns, where a warning names one (`ConfigParser.warnings`).
    public var deployment: DeploymentID?

    public init(path: String, message: String, deployment: DeploymentID? = nil) {
        self.path = path
        self.message = message
        self.deployment = deployment
    }

    /// "path: message", or just the message when it concerns the whole document.
    public var description: String {
        self.path.isEmpty ? self.message : "\(self.path): \(self.message)"
    }
}

/// Every problem found in a config. A config is rejected whole, before anything changes, and
/// the user sees all its mistakes at once rather than one per attempt.
public struct ConfigError: Error, Sendable, Hashable, CustomStringConvertible {
    public var problems: [ConfigProblem]

    public init(problems: [ConfigProblem]) {
        self.problems = problems
    }

    /// One line per problem.
    public var description: String {
        self.problems.map(\.description).joined(separator: "\n")
    }
}
