import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Sends "topic TAB key TAB value" lines from standard input through the Java client with its own
 * defaults (idempotence, its partitioner for keyed records), the compression type and linger of the
 * arguments: BOOTSTRAP COMPRESSION LINGER_MS. Prints the number sent; exits 1 if any failed.
 * Run as a single-file program on the broker's class path (tests/integration/workers.py).
 */
public class JavaProducer {
    public static void main(String[] args) throws Exception {
        Properties config = new Properties();
        config.put("bootstrap.servers", args[0]);
        config.put("compression.type", args[1]);
        config.put("linger.ms", args[2]);
        config.put("key.serializer", ByteArraySerializer.class.getName());
        config.put("value.serializer", ByteArraySerializer.class.getName());
        List<Exception> failed = Collections.synchronizedList(new ArrayList<>());
        long sent = 0;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(config);
                BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            String line;
            while ((line = in.readLine()) != null) {
                String[] fields = line.split("\t", 3);
                ProducerRecord<byte[], byte[]> record = new ProducerRecord<>(
                        fields[0],
                        fields[1].getBytes(StandardCharsets.UTF_8),
                        fields[2].getBytes(StandardCharsets.UTF_8));
                producer.send(record, (metadata, error) -> {
                    if (error != null) {
                        failed.add(error);
                    }
                });
                sent++;
            }
            producer.flush();
        }
        if (!failed.isEmpty()) {
            System.err.println(failed.size() + " sends failed, e.g. " + failed.get(0));
            System.exit(1);
        }
        System.out.println(sent);
    }
}
