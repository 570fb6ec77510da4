/// Label sets of the Prometheus text format, as every swift-serve endpoint writes them.
public enum PrometheusLabels {
    /// `application="…",deployment="…"`, plus `,node="…"` when given.
    public static func deployment(_ id: DeploymentID, node: String? = nil) -> String {
        "application=\"\(self.escape(id.app))\",deployment=\"\(self.escape(id.name))\"" + (node.map { ",node=\"\(self.escape($0))\"" } ?? "")
    }

    /// A label value escaped (backslash, double quote, newline), as the text format requires.
    public static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}
