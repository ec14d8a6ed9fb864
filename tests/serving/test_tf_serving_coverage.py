"""The upgrade-path script: it finds TF Serving's test cases and which of them our tests cite."""

from tests.helpers.tf_serving_coverage import cases_in, cases_of, cited_in, python_cases_in

CPP = """
TEST(JsontensorTest, SingleUnnamedTensor) {
TEST_F(HttpRestApiHandlerTest, kPathRegex) {
TYPED_TEST(ClassifyRegressRequestTest, JsonErrors) {
// TEST(Commented, Out) is not at the start of a line
"""

PYTHON = """
class TensorflowModelServerTest(base.TensorflowModelServerTestBase):
  def setUp(self):
  def _TestClassify(self, model_path):
  def testClassify(self):
  def testClassifyTf2(self):
  def test_tf_text(self):
def test_module_level_function():
"""


def test_finds_every_kind_of_case_and_matches_whole_names():
    cases = cases_in(CPP)
    assert cases == [
        "JsontensorTest.SingleUnnamedTensor",
        "HttpRestApiHandlerTest.kPathRegex",
        "ClassifyRegressRequestTest.JsonErrors",
    ]
    ours = ['"""JsontensorTest.SingleUnnamedTensorWithSignature"""', "# HttpRestApiHandlerTest.kPathRegex: n/a"]
    assert cited_in(ours, cases) == {"HttpRestApiHandlerTest.kPathRegex"}


def test_finds_the_test_methods_of_the_python_file_and_matches_whole_names():
    cases = cases_of("tensorflow_serving/model_servers/tensorflow_model_server_test.py", PYTHON)
    assert (
        cases
        == python_cases_in(PYTHON, "tensorflow_model_server_test.py")
        == [
            "tensorflow_model_server_test.py::testClassify",
            "tensorflow_model_server_test.py::testClassifyTf2",
            "tensorflow_model_server_test.py::test_tf_text",
        ]
    )
    ours = ['"""tensorflow_model_server_test.py::testClassifyTf2."""', "testClassify without the file name"]
    assert cited_in(ours, cases) == {"tensorflow_model_server_test.py::testClassifyTf2"}
