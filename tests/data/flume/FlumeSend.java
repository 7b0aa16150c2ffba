import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.flume.Event;
import org.apache.flume.api.RpcClient;
import org.apache.flume.api.RpcClientFactory;
import org.apache.flume.event.EventBuilder;

/** Sends COUNT events (from FIRST) to a Thrift source with Flume's own RpcClient, with topic (none for "-"), key and more
 * headers; its timestamp header is BASE + its number. */
public class FlumeSend {
  public static void main(String[] args) throws Exception {
    int port = Integer.parseInt(args[0]);
    int first = Integer.parseInt(args[1]);
    int count = Integer.parseInt(args[2]);
    String[] topics = args[3].split(",");
    long base = Long.parseLong(args[4]);
    Properties p = new Properties();
    p.setProperty("client.type", "thrift");
    p.setProperty("hosts", "h1");
    p.setProperty("hosts.h1", "127.0.0.1:" + port);
    p.setProperty("batch-size", "100");
    RpcClient client = RpcClientFactory.getInstance(p);
    List<Event> batch = new ArrayList<>();
    for (int i = first; i < first + count; i++) {
      Map<String, String> headers = new HashMap<>();
      String topic = topics[i % topics.length];
      if (!topic.equals("-")) headers.put("topic", topic);
      headers.put("key", "key-" + i);
      headers.put("seq", Integer.toString(i));
      headers.put("app", "flume-sdk");
      headers.put("timestamp", Long.toString(base + i));
      batch.add(EventBuilder.withBody(("event " + i).getBytes(StandardCharsets.UTF_8), headers));
      if (batch.size() == 100) { client.appendBatch(batch); batch.clear(); }
    }
    if (!batch.isEmpty()) client.appendBatch(batch);
    client.close();
    System.out.println("sent " + count);
  }
}
