import Foundation
import ServeCore

/// `serve status`'s node autoscaler section (when the head runs one): node types with their
/// counts and bounds, launches in flight, idle timers, demands waiting and infeasible ones.
enum NodeAutoscalerStatus {
    /// `node_autoscaler` of `GET /api/cluster/nodes`, or nil when the head has no node
    /// autoscaler.
    static func fetch(_ client: AdminClient) async throws -> JSONValue? {
        let (status, body) = try await client.call(.get, "/api/cluster/nodes")
        guard status == 200, let autoscaler = try JSONValue.parse(body)["node_autoscaler"], autoscaler != .null else {
            return nil
        }
        return autoscaler
    }

    static func render(_ status: JSONValue) -> String {
        func number(_ value: JSONValue?) -> String {
            guard let value = value?.doubleValue else { return "-" }
            return "\(ResourceQuantity(value))"
        }
        func resources(_ value: JSONValue?) -> String {
            let quantities = (value?.objectValue ?? [:]).compactMapValues { $0.doubleValue.map { ResourceQuantity($0) } }
            return ResourceSet(quantities).description
        }
        var out = "node autoscaler (\(status["provider"]?.stringValue ?? "?") provider, idle_timeout_s \(number(status["idle_timeout_s"])))\n"
        for type in status["node_types"]?.arrayValue ?? [] {
            var line = "  \(type["name"]?.stringValue ?? "?")  \(number(type["nodes"])) node(s)"
            line += ", \(number(type["launching"])) launching, \(number(type["draining"])) draining"
            line += "  (min \(number(type["min_workers"])), max \(number(type["max_workers"])); \(resources(type["resources"])))"
            if let retry = type["retry_in_s"], retry != .null { line += "  launches retry in \(number(retry)) s" }
            out += line + "\n"
        }
        for launch in status["launches_in_flight"]?.arrayValue ?? [] {
            out += "    launching \(launch["node_id"]?.stringValue ?? "?")  \(launch["state"]?.stringValue ?? "?")"
            out += "  \(number(launch["age_s"])) s (times out in \(number(launch["timeout_in_s"])) s): \(launch["reason"]?.stringValue ?? "")\n"
        }
        for node in status["managed_nodes"]?.arrayValue ?? [] {
            guard let idle = node["idle_s"], idle != .null else { continue }
            var line = "    idle \(node["node_id"]?.stringValue ?? "?")  \(number(idle)) s"
            if let due = node["idle_terminate_in_s"], due != .null {
                line += ", terminated in \(number(due)) s"
            } else {
                line += ", kept (min_workers)"
            }
            out += line + "\n"
        }
        for (label, key) in [("waiting", "pending_demands"), ("infeasible", "infeasible_demands")] {
            for demand in status[key]?.arrayValue ?? [] {
                out += "  ! \(label): \(number(demand["count"])) × \(demand["deployment"]?.stringValue ?? "?") (\(resources(demand["resources"]))): \(demand["reason"]?.stringValue ?? "")\n"
            }
        }
        return out
    }
}
