import Foundation
import ServeCore

/// A node's logical resources from its flags, as in Ray: CPUs default to the cores, GPUs to the
/// NVIDIA devices present (`nvidia-smi -L`), memory to 70% of physical memory (Ray keeps the
/// rest for the object store and the system; we keep it for the system and the worker itself).
/// Logical means `--num-cpus 8` on a 2-core machine is allowed.
public enum NodeResources {
    /// The share of physical memory a node offers to replicas when `--memory` is not given.
    public static let defaultMemoryShare = 0.7

    public static func make(
        numCPUs: Double?,
        numGPUs: Double?,
        memory: Double?,
        custom: [String: Double],
        acceleratorType: String?,
        detectedGPUs: [String]
    ) -> ResourceSet {
        var resources = ResourceSet()
        resources[ResourceSet.cpu] = ResourceQuantity(numCPUs ?? Double(ProcessInfo.processInfo.activeProcessorCount))
        resources[ResourceSet.gpu] = ResourceQuantity(numGPUs ?? Double(detectedGPUs.count))
        resources[ResourceSet.memory] = ResourceQuantity(
            (memory ?? Double(ProcessInfo.processInfo.physicalMemory) * Self.defaultMemoryShare).rounded(.down))
        for (name, amount) in custom { resources[name] = ResourceQuantity(amount) }
        if let acceleratorType, !acceleratorType.isEmpty {
            resources[ResourceSet.acceleratorKey(acceleratorType)] = ResourceQuantity(integer: 1)
        }
        return resources
    }

    /// NVIDIA GPUs present, by their CUDA_VISIBLE_DEVICES ids: one per `GPU N:` line of
    /// `nvidia-smi -L`, or none when nvidia-smi is absent or fails.
    public static func detectedGPUs() -> [String] {
        let candidates = ["/usr/bin/nvidia-smi", "/usr/local/bin/nvidia-smi", "/usr/local/nvidia/bin/nvidia-smi"]
        guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else { return [] }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["-L"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return [] }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return [] }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap { line in
            guard line.hasPrefix("GPU "), let colon = line.firstIndex(of: ":") else { return nil }
            return String(line[line.index(line.startIndex, offsetBy: 4)..<colon])
        }
    }

    /// The GPU ids a node grants: the detected ones, as many as its GPU count (`--num-gpus` may
    /// offer fewer than are present); without detected GPUs, "0", "1", … (a logical GPU count,
    /// as tests and CPU-only machines use).
    public static func gpuIDs(for resources: ResourceSet, detected: [String]) -> [String] {
        let count = Int(resources[ResourceSet.gpu].integerPart)
        if detected.isEmpty { return (0..<count).map(String.init) }
        return Array(detected.prefix(count))
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
