#include "formats/text_datasets.h"

#include "core/error.h"

#include <gtest/gtest.h>

namespace lowbit {
namespace {

TEST(TextDatasets, WikitextRows) {
  // Lines keep their "\n"; whitespace-only lines become "".
  auto rows = wikitext_rows(" \n = Title = \n \n Text here .\n");
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0], "");
  EXPECT_EQ(rows[1], " = Title = \n");
  EXPECT_EQ(rows[2], "");
  EXPECT_EQ(rows[3], " Text here .\n");
  EXPECT_EQ(join(rows, "\n\n"), "\n\n = Title = \n\n\n\n\n Text here .\n");
}

TEST(TextDatasets, PtbRows) {
  auto rows = ptb_rows(" no it was n't black monday \n but while\n");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0], "no it was n't black monday");
  EXPECT_EQ(join(rows, " "), "no it was n't black monday but while");
}

TEST(TextDatasets, CsvQuoting) {
  auto rows = parse_csv("a,\"b,c\",\"say \"\"hi\"\"\"\r\n\"multi\nline\",,x\n\nlast", "t.csv");
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"a", "b,c", "say \"hi\""}));
  EXPECT_EQ(rows[1], (std::vector<std::string>{"multi\nline", "", "x"}));
  EXPECT_TRUE(rows[2].empty());
  EXPECT_EQ(rows[3], (std::vector<std::string>{"last"}));
}

TEST(TextDatasets, CsvUnclosedQuoteNamesLine) {
  try {
    parse_csv("a,b\nc,\"open\n", "t.csv");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("t.csv: line 2"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowbit
