package rbackup.test;

import java.io.BufferedReader;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.HdfsConfiguration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.hadoop.hdfs.server.datanode.DataNode;

/**
 * rbackup's test HDFS: a MiniDFSCluster on 127.0.0.1 with free ports, driven over stdin/stdout.
 *
 * <p>Usage: {@code MiniHdfs <base dir> <client conf dir> <datanodes>}. It starts the cluster, writes
 * the client's core-site.xml and hdfs-site.xml into the conf dir, prints one line
 * {@code READY namenode=<port> http=<port> datanodes=<xfer ports>} and then obeys one command per
 * stdin line, answering {@code OK <command>} or {@code ERR <command>: <reason>}:
 * {@code stop-datanode N}, {@code restart-datanode N}, {@code restart-namenode}, {@code ports}.
 * It shuts the cluster down and exits when stdin closes, so it never outlives the tests.
 */
public final class MiniHdfs {
    private MiniHdfs() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: MiniHdfs <base dir> <client conf dir> <datanodes 1-3>");
            System.exit(2);
        }
        File base = new File(args[0]);
        File confDir = new File(args[1]);
        int datanodes = Integer.parseInt(args[2]);
        if (datanodes < 1 || datanodes > 3) {
            throw new IllegalArgumentException("1 to 3 DataNodes, not " + datanodes);
        }
        int replication = Math.min(datanodes, 3);

        Configuration conf = new HdfsConfiguration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.getAbsolutePath());
        conf.setInt("dfs.replication", replication);
        conf.setInt("dfs.namenode.safemode.extension", 0);
        // A stopped DataNode is declared dead after ~6 s instead of 10.5 min (fault tests).
        conf.setInt("dfs.heartbeat.interval", 1);
        conf.setInt("dfs.namenode.heartbeat.recheck-interval", 2000);
        conf.setBoolean("dfs.permissions.enabled", false);

        MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf)
                .numDataNodes(datanodes)
                .nameNodePort(0)
                .nameNodeHttpPort(0)
                .build();
        cluster.waitActive();
        writeClientConf(confDir, cluster.getNameNodePort(), replication);
        System.out.println("READY " + ports(cluster));
        System.out.flush();

        Map<Integer, MiniDFSCluster.DataNodeProperties> stopped = new HashMap<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String command = line.trim();
            if (command.isEmpty()) {
                continue;
            }
            try {
                String[] words = command.split("\\s+");
                switch (words[0]) {
                    case "stop-datanode": {
                        int index = Integer.parseInt(words[1]);
                        String name = cluster.getDataNodes().get(index).getDatanodeId().getXferAddr();
                        MiniDFSCluster.DataNodeProperties props = cluster.stopDataNode(name);
                        stopped.put(index, props);
                        break;
                    }
                    case "restart-datanode": {
                        int index = Integer.parseInt(words[1]);
                        MiniDFSCluster.DataNodeProperties props = stopped.remove(index);
                        if (props == null) {
                            throw new IllegalStateException("DataNode " + index + " was not stopped");
                        }
                        cluster.restartDataNode(props, true);
                        cluster.waitActive();
                        break;
                    }
                    case "restart-namenode":
                        cluster.restartNameNode(true);
                        cluster.waitActive();
                        break;
                    case "ports":
                        break;
                    default:
                        throw new IllegalArgumentException("unknown command");
                }
                System.out.println("OK " + command + " " + ports(cluster));
            } catch (Exception e) {
                System.out.println("ERR " + command + ": " + e);
            }
            System.out.flush();
        }
        cluster.shutdown();
        System.exit(0);
    }

    private static String ports(MiniDFSCluster cluster) {
        List<String> xfer = new ArrayList<>();
        for (DataNode dn : cluster.getDataNodes()) {
            xfer.add(Integer.toString(dn.getXferPort()));
        }
        return "namenode=" + cluster.getNameNodePort()
                + " http=" + cluster.getNameNode().getHttpAddress().getPort()
                + " datanodes=" + String.join(",", xfer);
    }

    /** What a client (libhdfs, via CLASSPATH) needs to reach this cluster; written before READY. */
    private static void writeClientConf(File dir, int nameNodePort, int replication) throws IOException {
        if (!dir.isDirectory() && !dir.mkdirs()) {
            throw new IOException("cannot create " + dir);
        }
        Map<String, String> core = new HashMap<>();
        core.put("fs.defaultFS", "hdfs://127.0.0.1:" + nameNodePort);
        // Fail in seconds, not minutes, while the NameNode is down or restarting.
        core.put("ipc.client.connect.max.retries", "3");
        core.put("ipc.client.connect.retry.interval", "500");
        Map<String, String> hdfs = new HashMap<>();
        hdfs.put("dfs.replication", Integer.toString(replication));
        // With fewer DataNodes than a pipeline wants, a failed one cannot be replaced: go on without it.
        hdfs.put("dfs.client.block.write.replace-datanode-on-failure.policy", "NEVER");
        write(new File(dir, "core-site.xml"), core);
        write(new File(dir, "hdfs-site.xml"), hdfs);
    }

    private static void write(File file, Map<String, String> props) throws IOException {
        Configuration out = new Configuration(false);
        for (Map.Entry<String, String> e : props.entrySet()) {
            out.set(e.getKey(), e.getValue());
        }
        File tmp = new File(file.getPath() + ".tmp");
        try (OutputStream stream = new FileOutputStream(tmp)) {
            out.writeXml(stream);
        }
        if (!tmp.renameTo(file)) {
            throw new IOException("cannot rename " + tmp + " to " + file);
        }
    }
}
