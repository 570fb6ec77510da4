import Foundation
import ServeCore

/// A node's logical resources from its flags, as in Ray: CPUs default to the cores, GPUs to the
/// NVIDIA devices present, memory to physical memory. Logical means `--num-cpus 8` on a 2-core
/// machine is allowed.
public enum NodeResources {
    public static func make(
        numCPUs: Double?,
        numGPUs: Double?,
        memory: Double?,
        custom: [String: Double],
        acceleratorType: String?
    ) -> ResourceSet {
        var resources = ResourceSet()
        resources[ResourceSet.cpu] = ResourceQuantity(numCPUs ?? Double(ProcessInfo.processInfo.activeProcessorCount))
        resources[ResourceSet.gpu] = ResourceQuantity(numGPUs ?? Double(self.detectedGPUs().count))
        resources[ResourceSet.memory] = ResourceQuantity(memory ?? Double(ProcessInfo.processInfo.physicalMemory))
        for (name, amount) in custom { resources[name] = ResourceQuantity(amount) }
        if let acceleratorType, !acceleratorType.isEmpty {
            resources[ResourceSet.acceleratorKey(acceleratorType)] = ResourceQuantity(integer: 1)
        }
        return resources
    }

    /// NVIDIA GPUs the driver exposes (their minor numbers are CUDA_VISIBLE_DEVICES ids).
    public static func detectedGPUs() -> [String] {
        let directory = "/proc/driver/nvidia/gpus"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        return entries.indices.map(String.init)
    }

    /// Parses `--resources '{"custom": 2}'`.
    public static func parseCustom(_ text: String?) throws -> [String: Double] {
        guard let text, !text.isEmpty else { return [:] }
        guard case .object(let object) = try JSONValue.parse(text) else {
            throw ResourceFlagError(description: "--resources must be a JSON object like '{\"custom\": 2}'")
        }
        var result: [String: Double] = [:]
        for (name, value) in object {
            guard case .number(let amount) = value, amount >= 0 else {
                throw ResourceFlagError(description: "--resources: '\(name)' must be a non-negative number")
            }
            result[name] = amount
        }
        return result
    }

    /// Parses `--labels k=v,k2=v2`.
    public static func parseLabels(_ text: String?) throws -> [String: String] {
        guard let text, !text.isEmpty else { return [:] }
        var labels: [String: String] = [:]
        for pair in text.split(separator: ",") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, !parts[0].isEmpty else {
                throw ResourceFlagError(description: "--labels takes k=v pairs separated by commas, got '\(pair)'")
            }
            labels[String(parts[0])] = String(parts[1])
        }
        return labels
    }
}

public struct ResourceFlagError: Error, CustomStringConvertible {
    public var description: String
}
